//! The image model: references, and manifests/indexes/configs as parsed from their bytes.
pub mod manifest;
pub mod reference;
