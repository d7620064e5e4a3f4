// cbor-x wraps require("cbor-extract") in try/catch and falls back to its JavaScript decoder.
throw new Error("cbor-extract native acceleration is not installed (stub, see package.json)")
