//! Streams N MiB of generated, compressible pseudo-text through `LayerWriter` into
//! /dev/null and prints the digests. Used to measure throughput and peak RSS:
//!
//! ```text
//! cargo build --release -p imgforge-layers --example write_layer
//! /usr/bin/time -v target/release/examples/write_layer 1024 gzip 0
//! ```
//!
//! Arguments: MiB (default 256), compression gzip|zstd|none (default gzip), threads
//! (default 0 = all cores), level (default: the compression's default).

use std::io::Write;
use std::time::Instant;

use imgforge_layers::synthetic::PseudoText;
use imgforge_layers::{CompressOptions, Compression, LayerWriter};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map(|s| s.parse().expect("MiB")).unwrap_or(256);
    let compression: Compression = args.get(2).map(|s| s.parse().expect("compression")).unwrap_or(Compression::Gzip);
    let threads: usize = args.get(3).map(|s| s.parse().expect("threads")).unwrap_or(0);
    let level: Option<i32> = args.get(4).map(|s| s.parse().expect("level"));
    let opts = CompressOptions { compression, level, threads };

    let sink = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let mut w = LayerWriter::new(std::io::BufWriter::with_capacity(256 * 1024, sink), opts)?;
    let mut text = PseudoText::new(1);
    let mut buf = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    for _ in 0..mib {
        text.fill(&mut buf, 1 << 20);
        w.write_all(&buf)?;
    }
    let (d, _) = w.finish()?;
    let secs = start.elapsed().as_secs_f64();
    println!("compression {} threads {} level {}", compression, opts.effective_threads(), opts.effective_level());
    println!("diff_id  {}", d.diff_id);
    println!("digest   {}", d.digest);
    println!("tar_size {}  blob size {}  ratio {:.3}", d.tar_size, d.size, d.size as f64 / d.tar_size.max(1) as f64);
    println!("{:.1} s  {:.0} MB/s (uncompressed, incl. generating the input)", secs, d.tar_size as f64 / secs / 1e6);
    Ok(())
}
