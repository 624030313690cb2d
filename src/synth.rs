//! A deterministic microscopy-like test volume: Gaussian blobs ("cells") on a vignetted
//! background, with shot and read noise, as uint16. Used by the demo, tests and benchmarks.
//! Invariant: the same parameters give the same bytes on every machine (integer PRNG, f64 math
//! rounded once per voxel).

use std::f64::consts::PI;

/// SplitMix64: a tiny, well-mixed deterministic generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }
}

#[derive(Debug, Clone)]
struct Blob {
    center: [f64; 3],
    sigma: [f64; 3],
    amplitude: f64,
}

/// The synthetic volume's parameters; [`Volume::slice`] renders one z-plane.
#[derive(Debug, Clone)]
pub struct Volume {
    shape: [u64; 3],
    blobs: Vec<Blob>,
    seed: u64,
}

impl Volume {
    /// A volume of `shape` (z, y, x) with about `density` cells per voxel.
    pub fn new(shape: [u64; 3], density: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let voxels = shape.iter().product::<u64>() as f64;
        let n = (voxels * density).round() as usize;
        let blobs = (0..n)
            .map(|_| {
                let sxy = 1.5 + 1.5 * rng.uniform();
                Blob {
                    center: [
                        rng.uniform() * shape[0] as f64,
                        rng.uniform() * shape[1] as f64,
                        rng.uniform() * shape[2] as f64,
                    ],
                    sigma: [1.3 * sxy, sxy, sxy],
                    amplitude: 300.0 + 2200.0 * rng.uniform(),
                }
            })
            .collect();
        Volume { shape, blobs, seed }
    }

    /// The shape (z, y, x).
    pub fn shape(&self) -> [u64; 3] {
        self.shape
    }

    /// Renders plane `z` as uint16, row-major (y, x).
    pub fn slice(&self, z: u64) -> Vec<u16> {
        let (ny, nx) = (self.shape[1] as usize, self.shape[2] as usize);
        let mut plane = vec![0f64; ny * nx];
        // Vignetted background, brighter in the middle.
        for y in 0..ny {
            let dy = (y as f64 + 0.5) / ny as f64 - 0.5;
            for x in 0..nx {
                let dx = (x as f64 + 0.5) / nx as f64 - 0.5;
                plane[y * nx + x] = 100.0 + 60.0 * (1.0 - 2.0 * (dx * dx + dy * dy)).max(0.0);
            }
        }
        let zf = z as f64 + 0.5;
        for b in &self.blobs {
            let dz = (zf - b.center[0]) / b.sigma[0];
            if dz.abs() > 3.0 {
                continue;
            }
            let wz = (-0.5 * dz * dz).exp() * b.amplitude;
            let ry = 3.0 * b.sigma[1];
            let rx = 3.0 * b.sigma[2];
            let y0 = (b.center[1] - ry).floor().max(0.0) as usize;
            let y1 = ((b.center[1] + ry).ceil() as usize).min(ny);
            let x0 = (b.center[2] - rx).floor().max(0.0) as usize;
            let x1 = ((b.center[2] + rx).ceil() as usize).min(nx);
            for y in y0..y1 {
                let dy = (y as f64 + 0.5 - b.center[1]) / b.sigma[1];
                let wy = (-0.5 * dy * dy).exp() * wz;
                for x in x0..x1 {
                    let dx = (x as f64 + 0.5 - b.center[2]) / b.sigma[2];
                    plane[y * nx + x] += wy * (-0.5 * dx * dx).exp();
                }
            }
        }
        // Shot noise (Gaussian approximation of Poisson) plus read noise; the stream depends
        // only on (seed, z), so planes can be rendered in any order.
        let mut rng = Rng::new(self.seed ^ (z.wrapping_add(1)).wrapping_mul(0xD1B5_4A32_D192_ED03));
        plane
            .into_iter()
            .map(|v| {
                let noisy = v + v.sqrt() * rng.normal() + 3.0 * rng.normal();
                noisy.round().clamp(0.0, 65535.0) as u16
            })
            .collect()
    }

    /// Renders the whole volume (small volumes only), C order.
    pub fn render(&self) -> Vec<u16> {
        (0..self.shape[0]).flat_map(|z| self.slice(z)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let v = Volume::new([8, 40, 50], 4e-4, 7);
        let a = v.render();
        assert_eq!(a, Volume::new([8, 40, 50], 4e-4, 7).render());
        assert_eq!(v.slice(3), a[3 * 2000..4 * 2000].to_vec());
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        assert!((100.0..400.0).contains(&mean), "mean {mean}");
        assert!(a.iter().any(|&x| x > 700), "some cells are bright");
    }
}
