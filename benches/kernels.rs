//! Each kernel alone on one 128³ uint16 chunk of microscopy-like data (with its halo padded by
//! the boundary mode), in bytes/s of input: kernel speed apart from decoding, encoding and I/O.
//!
//! Run: `cargo bench --bench kernels`.

use std::hint::black_box;

use chunkwise::kernel::lut::Table;
use chunkwise::kernel::{Correlate1d, Gaussian, Kernel, Lut, NeighbourhoodLut, Threshold};
use chunkwise::support::synth::Volume;
use chunkwise::{Boundary, DType, Element};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn kernels(c: &mut Criterion) {
    let shape = [128u64, 128, 128];
    let vol = Volume::new(shape, 8e-5 * 8.0, 11).render();
    let mut data = Vec::new();
    u16::extend_le_bytes(&vol, &mut data);
    let dir = tempfile::tempdir().expect("temp dir");
    // W4's table and a W7-style neighbourhood table (2^27 entries).
    let ramp: Vec<u8> = (0..65536u32)
        .map(|v| {
            if v < 120 {
                0
            } else if v >= 3000 {
                255
            } else {
                (((v - 120) * 65025 / 2880) as f64).sqrt() as u8
            }
        })
        .collect();
    let lut_path = dir.path().join("ramp.npy");
    chunkwise::support::write_npy(&lut_path, DType::U8, &[65536], &ramp).expect("write table");
    let n27: u64 = 1 << 27;
    let t27: Vec<u8> = (0..n27)
        .map(|i| u8::from((i >> 13) & 1 == 1 && (i & !(1 << 13)).count_ones() >= 6))
        .collect();
    let t27_path = dir.path().join("lut27.npy");
    chunkwise::support::write_npy(&t27_path, DType::U8, &[n27], &t27).expect("write table");

    let cases: Vec<(&str, Box<dyn Kernel>)> = vec![
        (
            "gaussian_sigma2_f32",
            Box::new(Gaussian {
                sigma: vec![2.0],
                truncate: 4.0,
                mode: Boundary::Reflect,
                dtype: None,
            }),
        ),
        (
            "correlate1d_17taps_axis0",
            Box::new(Correlate1d {
                axis: 0,
                weights: vec![1.0 / 17.0; 17],
                origin: 0,
                mode: Boundary::Reflect,
                dtype: None,
            }),
        ),
        (
            "correlate1d_17taps_axis2",
            Box::new(Correlate1d {
                axis: 2,
                weights: vec![1.0 / 17.0; 17],
                origin: 0,
                mode: Boundary::Reflect,
                dtype: None,
            }),
        ),
        (
            "lut_u16_u8",
            Box::new(Lut::new(Table::open(&lut_path).expect("table"))),
        ),
        (
            "threshold",
            Box::new(Threshold {
                above: chunkwise::Number::from(700.0),
            }),
        ),
        (
            "neighbourhood_lut_above",
            Box::new(
                NeighbourhoodLut::new(Table::open(&t27_path).expect("table"))
                    .expect("2^27 entries")
                    .above(Some(700.0.into())),
            ),
        ),
    ];
    let mut g = c.benchmark_group("kernel");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for (name, k) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                chunkwise::apply_in_memory(k.as_ref(), DType::U16, &shape, black_box(&data))
                    .expect("kernel")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
