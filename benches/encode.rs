//! The encode path alone, in bytes/s of uncompressed chunk data:
//! - `codec/*`: one chunk through each codec (the floor a convert cannot beat);
//! - `chunk_shape/*`: the default codec at several chunk (frame) sizes;
//! - `write/*`: encode + hand-off to the background writer + the final sync, for a small store,
//!   against encode alone: the difference is what I/O and durability cost.
//!
//! Run: `cargo bench --bench encode` (results in target/criterion).

use std::hint::black_box;

use chunkwise::support::synth::Volume;
use chunkwise::{Codec, DType, Durability, Element, StoreSpec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A microscopy-like uint16 chunk of `shape` (z, y, x), as bytes.
fn chunk(shape: [u64; 3]) -> Vec<u8> {
    let v = Volume::new(shape, 8e-5 * 8.0, 42).render();
    let mut b = Vec::new();
    u16::extend_le_bytes(&v, &mut b);
    b
}

fn codecs(c: &mut Criterion) {
    let shape = [128, 128, 128];
    let data = chunk(shape);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for codec in [
        Codec::Zstd { level: 3 },
        Codec::BloscZstd { level: 1 },
        Codec::BloscZstd { level: 3 },
        Codec::BloscLz4 { level: 5 },
    ] {
        let spec = StoreSpec::new(shape.to_vec(), DType::U16, shape.to_vec()).codec(codec);
        let pipeline = spec.chunk_codec().expect("valid spec");
        let encoded = pipeline.encode(&data).expect("encode");
        let name = format!("{}-{}", codec.name(), level(codec));
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| pipeline.encode(black_box(&data)).expect("encode"))
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| pipeline.decode(black_box(&encoded)).expect("decode"))
        });
    }
    g.finish();
}

fn level(c: Codec) -> i32 {
    c.level()
}

fn chunk_shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_shape");
    g.sample_size(10);
    for shape in [[32, 64, 64], [64, 64, 64], [128, 128, 128], [64, 256, 256]] {
        let data = chunk(shape);
        g.throughput(Throughput::Bytes(data.len() as u64));
        let spec = StoreSpec::new(shape.to_vec(), DType::U16, shape.to_vec());
        let pipeline = spec.chunk_codec().expect("valid spec");
        g.bench_function(format!("{}x{}x{}", shape[0], shape[1], shape[2]), |b| {
            b.iter(|| pipeline.encode(black_box(&data)).expect("encode"))
        });
    }
    g.finish();
}

fn write_path(c: &mut Criterion) {
    // 8 chunks of 64^3 uint16 (4 MiB): encode alone, then the whole writer with and without sync.
    let shape = [128u64, 128, 128];
    let cs = [64u64, 64, 64];
    let vol = chunk(shape);
    let chunks: Vec<(Vec<u64>, Vec<u8>)> = (0..8u64)
        .map(|k| {
            let idx = vec![k >> 2, (k >> 1) & 1, k & 1];
            let mut buf = Vec::with_capacity(64 * 64 * 64 * 2);
            for z in 0..64 {
                for y in 0..64 {
                    let zz = (idx[0] * 64 + z) as usize;
                    let yy = (idx[1] * 64 + y) as usize;
                    let x0 = (idx[2] * 64) as usize;
                    let off = (zz * 128 * 128 + yy * 128 + x0) * 2;
                    buf.extend_from_slice(&vol[off..off + 128]);
                }
            }
            (idx, buf)
        })
        .collect();
    let spec = StoreSpec::new(shape.to_vec(), DType::U16, cs.to_vec());
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Bytes(vol.len() as u64));
    g.sample_size(10);
    let pipeline = spec.chunk_codec().expect("valid spec");
    g.bench_function("encode_only", |b| {
        b.iter(|| {
            for (_, data) in &chunks {
                black_box(pipeline.encode(data).expect("encode"));
            }
        })
    });
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, durability) in [
        ("store_nosync", Durability::NoSync),
        ("store_sync", Durability::Sync),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = dir.path().join("b.zarr");
                let w = spec.create(&out, true, durability).expect("create");
                for (idx, data) in &chunks {
                    w.write_chunk(idx, data).expect("write");
                }
                w.commit().expect("commit");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs, chunk_shapes, write_path);
criterion_main!(benches);
