//! Authorship is the server's record, not the uploader's claim.
//!
//! Every automerge change names its author: its actor id, which the uploader chooses. Left
//! unchecked, a volunteer could write a change under a coordinator's actor and have the history list
//! it under the coordinator. So the server decides who an actor belongs to:
//!
//! * **Reserved actors** are the server's own: the server device (`00000000-…`, which writes the
//!   village profiles) and generation [`API_GENERATION`] of any device (edits the server makes
//!   for a person through the API). Only changes the server makes itself may use them.
//! * **Device actors** — a device id's 16 bytes, optionally followed by a 4-byte generation
//!   (`desa` stores write so) — belong to that device's *person*: any device of the same person
//!   may upload under them, because a phone re-tokened with `desa token set` keeps its actor and its
//!   waiting changes while its token (and so its device id) changes.
//! * **Any other actor** (automerge-repo apps pick random ones) is bound on first use to the person
//!   whose device first uploads a change under it; a device of another person uploading under it is
//!   refused.
//!
//! A report's first change must also name, in `created_by`, a device of the person creating it:
//! apps learn their device id from `GET /api/v1/me`.

use automerge::ActorId;

use super::{Principal, Refusal, RefusalCode};
use crate::{DeviceId, SERVER_DEVICE};

/// The actor generation of edits the server makes for a person through the API (a coordinator's
/// `PATCH`): reserved, so such edits and the same device's own syncs never share an actor (and so
/// never a sequence number), and no upload can pass for one.
pub const API_GENERATION: u32 = u32::MAX;

/// What the server knows of who owns devices and actors. The server answers from its directory and
/// its table of bound actors; the simulator from memory.
pub trait Actors {
    /// The person (account name) `device` belongs to, if it is a device of this server — revoked
    /// ones included: their changes stay theirs.
    fn device_owner(&self, device: DeviceId) -> Option<String>;
    /// The person an actor (not a device's) was bound to on first use.
    fn actor_owner(&self, actor: &ActorId) -> Option<String>;
}

/// A new binding of an actor to the person who first uploaded under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The actor.
    pub actor: ActorId,
    /// The person.
    pub user: String,
    /// The device that uploaded the first change under it.
    pub device: DeviceId,
}

/// Whether `actor` is one of the server's own (see the module documentation).
pub fn is_reserved(actor: &ActorId) -> bool {
    DeviceId::from_actor(actor)
        .is_some_and(|(device, generation)| device == SERVER_DEVICE || generation == API_GENERATION)
}

/// How a change's actor stands for an uploader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorship {
    /// The actor belongs to the uploader's person already (or the server made the change).
    Owned,
    /// The actor is new: bind it to the uploader.
    Bind(Binding),
}

/// Whether `by` may upload a change written under `actor`. `made_by_server`: the server itself
/// wrote the change (village profiles, API edits), under an actor it chose.
pub fn judge_actor(
    actor: &ActorId,
    by: &Principal,
    made_by_server: bool,
    actors: &dyn Actors,
) -> Result<Authorship, Refusal> {
    if made_by_server {
        return Ok(Authorship::Owned);
    }
    if is_reserved(actor) {
        return Err(Refusal::new(
            RefusalCode::NotPermitted,
            format!("actor {actor} is reserved for changes the server makes"),
        ));
    }
    let owner = DeviceId::from_actor(actor)
        .and_then(|(device, _)| actors.device_owner(device))
        .or_else(|| actors.actor_owner(actor));
    match owner {
        Some(user) if user == by.user => Ok(Authorship::Owned),
        Some(_) => Err(Refusal::new(
            RefusalCode::NotPermitted,
            format!("actor {actor} belongs to another person: upload only your own changes"),
        )),
        None => Ok(Authorship::Bind(Binding {
            actor: actor.clone(),
            user: by.user.clone(),
            device: by.device,
        })),
    }
}

/// Whether `created_by` (a new report's field) names a device of `by`'s person: one of their
/// devices on this server, or — for a report made offline by a `desa` store older than device
/// tokens, whose own id the office never issued — the device whose actor wrote the first change
/// (`actor`, already judged to be `by`'s own).
pub fn judge_created_by(
    created_by: Option<&str>,
    actor: &ActorId,
    by: &Principal,
    made_by_server: bool,
    actors: &dyn Actors,
) -> Result<(), Refusal> {
    let device = created_by.and_then(|text| text.parse::<DeviceId>().ok());
    let ok = match device {
        Some(d) if made_by_server => d == by.device,
        Some(d) => match actors.device_owner(d) {
            Some(user) => user == by.user,
            None => DeviceId::from_actor(actor).is_some_and(|(own, _)| own == d),
        },
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalCode::BadCreation,
            "created_by must be the id of one of your devices (GET /api/v1/me gives it)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rules::{Access, Role};

    #[derive(Default)]
    struct Book {
        devices: HashMap<DeviceId, String>,
        actors: HashMap<ActorId, String>,
    }

    impl Actors for Book {
        fn device_owner(&self, device: DeviceId) -> Option<String> {
            self.devices.get(&device).cloned()
        }
        fn actor_owner(&self, actor: &ActorId) -> Option<String> {
            self.actors.get(actor).cloned()
        }
    }

    fn person(user: &str, device: DeviceId) -> Principal {
        Principal {
            user: user.into(),
            device,
            access: Access::everywhere(Role::Volunteer),
        }
    }

    #[test]
    fn device_actors_belong_to_their_person_and_random_ones_to_their_first_uploader() {
        let (ani_phone, ani_old_phone, budi_phone) = (
            DeviceId::from_bytes([1; 16]),
            DeviceId::from_bytes([2; 16]),
            DeviceId::from_bytes([3; 16]),
        );
        let mut book = Book::default();
        book.devices.insert(ani_phone, "ani".into());
        book.devices.insert(ani_old_phone, "ani".into());
        book.devices.insert(budi_phone, "budi".into());
        let ani = person("ani", ani_phone);
        let budi = person("budi", budi_phone);

        // Ani's re-tokened phone still writes under its old device's actor.
        for generation in [0, 3] {
            assert_eq!(
                judge_actor(&ani_old_phone.actor(generation), &ani, false, &book),
                Ok(Authorship::Owned)
            );
        }
        // Budi cannot write as Ani.
        let forged = judge_actor(&ani_phone.actor(0), &budi, false, &book);
        assert_eq!(forged.map_err(|r| r.code), Err(RefusalCode::NotPermitted));

        // An app's random actor is bound to whoever uploads under it first…
        let random = ActorId::from(vec![9u8; 16]);
        let Ok(Authorship::Bind(binding)) = judge_actor(&random, &budi, false, &book) else {
            panic!("a new actor is bound");
        };
        assert_eq!(
            (binding.user.as_str(), binding.device),
            ("budi", budi_phone)
        );
        book.actors.insert(random.clone(), "budi".into());
        // …and is then Budi's alone.
        assert_eq!(
            judge_actor(&random, &budi, false, &book),
            Ok(Authorship::Owned)
        );
        assert!(judge_actor(&random, &ani, false, &book).is_err());
    }

    #[test]
    fn reserved_actors_are_the_servers_alone() {
        let phone = DeviceId::from_bytes([1; 16]);
        let mut book = Book::default();
        book.devices.insert(phone, "office".into());
        let office = person("office", phone);
        for actor in [SERVER_DEVICE.actor(0), phone.actor(API_GENERATION)] {
            assert!(is_reserved(&actor));
            assert!(judge_actor(&actor, &office, false, &book).is_err());
            assert_eq!(
                judge_actor(&actor, &office, true, &book),
                Ok(Authorship::Owned)
            );
        }
        assert!(!is_reserved(&phone.actor(7)));
    }

    #[test]
    fn created_by_names_a_device_of_the_creator() {
        let (ani_phone, budi_phone) =
            (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([3; 16]));
        let mut book = Book::default();
        book.devices.insert(ani_phone, "ani".into());
        book.devices.insert(budi_phone, "budi".into());
        let ani = person("ani", ani_phone);
        let mine = ani_phone.to_string();
        let theirs = budi_phone.to_string();
        let app = ActorId::from(vec![9u8; 16]);
        assert!(judge_created_by(Some(&mine), &app, &ani, false, &book).is_ok());
        for bad in [Some(theirs.as_str()), Some("d1"), None] {
            let refused = judge_created_by(bad, &app, &ani, false, &book);
            assert_eq!(refused.map_err(|r| r.code), Err(RefusalCode::BadCreation));
        }
        // A store older than tokens: its own id (never issued) wrote the first change.
        let old_store = DeviceId::from_bytes([7; 16]);
        let old = old_store.to_string();
        assert!(judge_created_by(Some(&old), &old_store.actor(0), &ani, false, &book).is_ok());
        assert!(judge_created_by(Some(&old), &app, &ani, false, &book).is_err());
        let server = Principal::server();
        let profile = SERVER_DEVICE.actor(0);
        assert!(judge_created_by(
            Some(&SERVER_DEVICE.to_string()),
            &profile,
            &server,
            true,
            &book
        )
        .is_ok());
    }
}
