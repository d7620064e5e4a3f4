//! Entry points for the fuzz targets (`fuzz/`) and their regression test: each feeds untrusted
//! bytes to one decoder and everything behind it. None may panic, whatever the bytes.

use automerge::{Automerge, Change};

use crate::rules::{self, Role};
use crate::sim::{MemoryDevice, MemoryServer};
use crate::{DeviceId, ReportId, ReportKind, VillageCode};

const VOLUNTEER: rules::Access = rules::Access::everywhere(Role::Volunteer);

fn village() -> Option<VillageCode> {
    VillageCode::parse("6302010001").ok()
}

/// Bytes as the body of `POST /api/v1/sync`, to a server holding one village profile.
pub fn sync_request(bytes: &[u8]) {
    let Some(v) = village() else { return };
    let mut server = MemoryServer::with_village_profiles(&[v]);
    let _ = server.handle(bytes);
}

/// Bytes as the server's answer, to a device with a report waiting to be sent.
pub fn sync_response(bytes: &[u8]) {
    let Some(v) = village() else { return };
    let mut device = MemoryDevice::new(DeviceId::from_bytes([1; 16]), v);
    if device
        .create(ReportKind::Incident, &crate::sim::sample_fields("fuzz"))
        .is_ok()
    {
        let _ = device.handle_response(bytes);
    }
}

/// Bytes as an uploaded change of an existing report: parsing and admission.
pub fn change(bytes: &[u8]) {
    let Ok(change) = Change::from_bytes(bytes.to_vec()) else {
        return;
    };
    let Some(v) = village() else { return };
    let Ok((report, genesis)) = crate::Report::village_profile(v) else {
        return;
    };
    let mut doc = Automerge::new();
    if doc.apply_changes([genesis]).is_ok() {
        let _ = rules::admit(&mut doc, report.id(), vec![change.clone()], &VOLUNTEER);
    }
    // And as the first change of a new report.
    let _ = rules::admit(
        &mut Automerge::new(),
        ReportId::from_random([9; 16]),
        vec![change],
        &VOLUNTEER,
    );
}

/// Bytes as a stored document (a snapshot, possibly followed by changes): loading and reading.
pub fn stored_doc(bytes: &[u8]) {
    let Ok(doc) = Automerge::load(bytes) else {
        return;
    };
    let _ = crate::view::materialize(&doc);
    let _ = crate::view::conflicts(&doc);
    let _ = rules::report_kind(&doc);
}
