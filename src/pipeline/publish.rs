//! Writing the new image to each destination: new layers come from the store, base layers
//! from the base's source (fetched only for destinations that need their bytes).

use std::io::Read;

use imgforge_layers::Digest;

use super::{BuildError, BuildOptions};
use crate::image::manifest::Descriptor;
use crate::image::reference::ImageRef;
use crate::report::{Event, Reporter};
use crate::store::BlobStore;
use crate::transport::{self, Blobs, NewImage, Source, TransportError};

pub fn publish(
    opts: &BuildOptions,
    image: &NewImage,
    store: &BlobStore,
    source: &Source,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let blobs = BuildBlobs { store, source };
    let topts = opts.transport();
    // Base layers are fetched only for destinations that are not registries (a registry
    // gets them by mount or from the registry it already has them in), all at once.
    if opts.destinations.iter().any(|d| !matches!(d, ImageRef::Registry(_))) {
        source
            .prefetch(&image.layers, reporter)
            .map_err(|source| BuildError::Base { reference: opts.base_name.clone(), source })?;
    }
    for dest in &opts.destinations {
        let reference = dest.to_string();
        reporter.report(Event::Step(&format!("Writing {reference}")));
        let s = transport::write(dest, image, &blobs, &topts, reporter)
            .map_err(|source| BuildError::Destination { reference: reference.clone(), source })?;
        reporter.report(Event::Destination {
            reference: &reference,
            written: s.blobs_written,
            linked: s.blobs_linked,
            mounted: s.blobs_mounted,
            present: s.blobs_present,
            bytes: s.bytes_written,
        });
    }
    Ok(())
}

/// New layers come from the store, base layers from the base image's source.
struct BuildBlobs<'a> {
    store: &'a BlobStore,
    source: &'a Source,
}

impl Blobs for BuildBlobs<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        if self.store.contains(&d.digest) {
            return Ok(Box::new(self.store.open_blob(&d.digest, Some(d.size))?));
        }
        self.source.open_verified(d)
    }

    fn local_file(&self, d: &Descriptor) -> Result<Option<transport::LocalBlob<'_>>, TransportError> {
        match self.store.local_file(&d.digest, d.size)? {
            Some((f, id)) => Ok(Some(transport::LocalBlob::new(f, id, self.store.verified()))),
            None => self.source.local_file(d),
        }
    }

    fn mount_source(&self, d: &Digest) -> Option<crate::image::reference::DockerName> {
        self.source.mount_source(d)
    }
}
