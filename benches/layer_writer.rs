//! Layer writing throughput: `LayerWriter` per compressor and thread count on 64 MiB of
//! compressible pseudo-text, and scan + normalized tar of a generated tree.
//!
//! `cargo bench --bench layer_writer` (add `-- gzip` etc. to filter).

use std::fs;
use std::hint::black_box;
use std::io::{self, Write};
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imgforge_layers::synthetic::PseudoText;
use imgforge_layers::{scan_tree, CompressOptions, Compression, LayerWriter, Normalize, Owner, TarWriter};

const STREAM_BYTES: usize = 64 << 20;

fn layer_writer(c: &mut Criterion) {
    let data = PseudoText::bytes(STREAM_BYTES, 1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut g = c.benchmark_group("layer_writer_64MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    let mut cases = vec![(Compression::None, 1)];
    for comp in [Compression::Gzip, Compression::Zstd] {
        cases.push((comp, 1));
        if cores > 1 {
            cases.push((comp, cores));
        }
    }
    for (compression, threads) in cases {
        let opts = CompressOptions { compression, level: None, threads };
        g.bench_with_input(BenchmarkId::new(compression.name(), format!("threads={threads}")), &data, |b, data| {
            b.iter(|| {
                let mut w = LayerWriter::new(io::sink(), opts).unwrap();
                // Writes of 256 KiB, like the tar writer's file copies.
                for piece in data.chunks(256 * 1024) {
                    w.write_all(piece).unwrap();
                }
                black_box(w.finish().unwrap().0)
            })
        });
    }
    g.finish();
}

/// 2000 files (1–64 KiB) in 40 directories plus symlinks: ≈ 64 MiB.
fn make_tree(root: &Path) -> u64 {
    let mut total = 0;
    for d in 0..40 {
        let dir = root.join(format!("pkg{d:02}/lib"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            let len = 1024 + ((d * 50 + f) * 7919) % (63 * 1024);
            fs::write(dir.join(format!("mod{f:03}.py")), PseudoText::bytes(len, (d * 50 + f) as u64)).unwrap();
            total += len as u64;
        }
        std::os::unix::fs::symlink("lib/mod000.py", root.join(format!("pkg{d:02}/main.py"))).unwrap();
    }
    total
}

fn scan_and_tar(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = make_tree(tmp.path());
    let mut g = c.benchmark_group("scan_and_tar_2000_files");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("scan", |b| b.iter(|| black_box(scan_tree(tmp.path(), &|_, _| true).unwrap().entries.len())));
    let tree = scan_tree(tmp.path(), &|_, _| true).unwrap();
    g.bench_function("tar_uncompressed", |b| {
        b.iter(|| {
            let mut tar = TarWriter::new(io::sink(), Normalize::default());
            tree.write_to(&mut tar, b"workspace", Owner { uid: 1000, gid: 1000 }).unwrap();
            tar.finish().unwrap();
        })
    });
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let opts = CompressOptions { compression, level: None, threads: 0 };
        g.bench_function(BenchmarkId::new("scan_tar_layer", compression.name()), |b| {
            b.iter(|| {
                let tree = scan_tree(tmp.path(), &|_, _| true).unwrap();
                let (d, _) = imgforge_layers::write_tree_layer(
                    io::sink(),
                    opts,
                    Normalize::default(),
                    &tree,
                    b"workspace",
                    Owner { uid: 1000, gid: 1000 },
                )
                .unwrap();
                black_box(d)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, layer_writer, scan_and_tar);
criterion_main!(benches);
