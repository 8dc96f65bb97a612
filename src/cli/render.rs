//! Draws reporter events on stderr: a progress line on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use imgforge::report::{Event, Reporter, Silent};

use super::escape::escape_controls;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub fn for_stderr(quiet: bool, verbose: bool, tty: bool) -> Box<dyn Reporter> {
    if quiet {
        Box::new(Silent)
    } else if tty {
        Box::new(Terminal { verbose, bar: Mutex::new(None), blobs: Mutex::new(Blobs::default()) })
    } else {
        Box::new(Plain { verbose })
    }
}

/// A size for people: bytes below 1 KiB, else KiB, MiB or GiB with one decimal.
fn mb(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 layer`, `2 layers`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The line an event is worth, or `None` (progress ticks, or details when not verbose).
fn line(event: &Event<'_>, verbose: bool) -> Option<String> {
    Some(match event {
        Event::Step(s) => s.to_string(),
        Event::BaseResolved { reference, digest, layers } => match digest {
            Some(d) => format!("Base {reference} ({d}, {})", count(*layers, "layer")),
            None => format!("Base {reference} (empty)"),
        },
        Event::LayerProgress { .. } => return None,
        Event::LayerDone { name, digests, reused, why } => {
            let how = match (reused, why) {
                (true, _) => "reused".to_string(),
                (false, Some(w)) if verbose => format!("rebuilt because {w}"),
                (false, _) => "written".to_string(),
            };
            format!(
                "Layer {name}: {how} {} ({} → {} {})",
                digests.digest,
                mb(digests.tar_size),
                mb(digests.size),
                digests.compression.name()
            )
        }
        Event::Destination { reference, written, linked, mounted, present, bytes } => {
            if reference.starts_with("docker://") {
                format!(
                    "Pushed {reference}: {} uploaded ({}), {present} already present, {mounted} mounted",
                    count(*written, "blob"),
                    mb(*bytes)
                )
            } else {
                let linked = if *linked > 0 { format!(", {linked} hard-linked") } else { String::new() };
                format!(
                    "Wrote {reference}: {} copied ({}){linked}, {present} already there",
                    count(*written, "blob"),
                    mb(*bytes)
                )
            }
        }
        Event::BlobProgress { .. } => return None,
        Event::Detected { candidate, applies: true, detail } => {
            format!("Buildpack {candidate}: detected {detail}").trim_end().to_string()
        }
        Event::Detected { candidate, applies: false, .. } => format!("Buildpack {candidate}: does not apply"),
        Event::CommandOutput { line, .. } => line.to_string(),
        Event::BuildImageReady { reference, unpacked: true, millis, bytes } => {
            format!("Build image {reference}: unpacked ({}) in {:.1} s", mb(*bytes), *millis as f64 / 1000.0)
        }
        Event::BuildImageReady { reference, unpacked: false, .. } => {
            format!("Build image {reference}: reusing its unpacked filesystem")
        }
        Event::CommandsRun(how) => format!("Buildpacks run {how}"),
        Event::Warning(w) => format!("warning: {w}"),
        Event::Detail(d) if verbose => d.clone(),
        Event::Detail(_) => return None,
    })
}

struct Plain {
    verbose: bool,
}

impl Reporter for Plain {
    fn report(&self, event: Event<'_>) {
        if let Some(l) = line(&event, self.verbose) {
            eprintln!("imgforge: {}", escape_controls(&l, false));
        }
    }
}

struct Terminal {
    verbose: bool,
    bar: Mutex<Option<ProgressBar>>,
    blobs: Mutex<Blobs>,
}

/// One bar per blob in transfer (bytes, rate).
#[derive(Default)]
struct Blobs {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
}

impl Terminal {
    fn blob_progress(&self, action: &str, digest: &str, done: u64, total: u64) {
        let mut b = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        let multi = b.multi.get_or_insert_with(MultiProgress::new).clone();
        let bar = b.bars.entry(digest.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let short = digest.strip_prefix("sha256:").unwrap_or(digest);
            bar.set_message(format!("{action} {}", &short[..short.len().min(12)]));
            bar
        });
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            b.bars.remove(digest);
        }
    }
}

impl Reporter for Terminal {
    fn report(&self, event: Event<'_>) {
        if let Event::BlobProgress { action, digest, done, total } = event {
            self.blob_progress(action, digest, done, total);
            return;
        }
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Event::LayerProgress { name, bytes } = event {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})").expect("valid template"),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            b.set_message(format!("layer {name}"));
            b.set_position(bytes);
            return;
        }
        if let Some(l) = line(&event, self.verbose) {
            let l = escape_controls(&l, true).into_owned();
            if let Event::LayerDone { .. } = event {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            match bar.as_ref() {
                Some(b) => b.println(l),
                None => eprintln!("{l}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_as_people_write_them() {
        assert_eq!(mb(0), "0 B");
        assert_eq!(mb(1023), "1023 B");
        assert_eq!(mb(1536), "1.5 KiB");
        assert_eq!(mb(122 * 1024 * 1024), "122.0 MiB");
        assert_eq!(mb(3 << 30), "3.0 GiB");
        assert_eq!(count(1, "layer"), "1 layer");
        assert_eq!(count(2, "layer"), "2 layers");
        assert_eq!(count(0, "blob"), "0 blobs");
    }
}
