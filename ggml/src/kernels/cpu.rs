//! Which SIMD instruction sets this CPU has, detected once per process at run time (never
//! only at compile time: one binary serves every x86-64 or aarch64 machine).

use std::sync::OnceLock;

/// An instruction-set level a kernel is written for, from plainest to widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust: the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/VNNI (Ice Lake, Zen 4 and later).
    Avx512,
    /// aarch64 NEON (+ dot product).
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Every level this CPU can run, the reference first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if detected().avx2 {
                v.push(Isa::Avx2);
            }
            if detected().avx512 {
                v.push(Isa::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if detected().neon {
            v.push(Isa::Neon);
        }
        v
    }

    /// The widest level this CPU runs, unless `GEMMA_ISA` (scalar, avx2, avx512, neon) asks
    /// for a narrower one — for benchmarks and for checking a path on a wider machine.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Isa::available();
            let widest = *available.last().expect("scalar is always available");
            match std::env::var("GEMMA_ISA") {
                Ok(want) => available.into_iter().find(|isa| isa.name() == want).unwrap_or(widest),
                Err(_) => widest,
            }
        })
    }
}

/// Raw feature flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub avx2: bool,
    pub avx512: bool,
    pub avx512_bf16: bool,
    pub neon: bool,
}

pub fn detected() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    Features {
        avx2,
        avx512: avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni"),
        avx512_bf16: has!("avx512bf16"),
        neon: false,
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Features {
    use std::arch::is_aarch64_feature_detected as has;
    Features { neon: has!("neon") && has!("dotprod"), ..Features::default() }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Features {
    Features::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widest_detected_level_is_the_default() {
        // A default build (no target-cpu flags) must still pick AVX-512 on a CPU that has it;
        // GEMMA_ISA, when set to a level this CPU has, overrides.
        let forced = std::env::var("GEMMA_ISA").ok();
        let want = if let Some(isa) = Isa::available().into_iter().find(|i| Some(i.name()) == forced.as_deref()) {
            isa
        } else if detected().avx512 {
            Isa::Avx512
        } else if detected().avx2 {
            Isa::Avx2
        } else if detected().neon {
            Isa::Neon
        } else {
            Isa::Scalar
        };
        assert_eq!(Isa::best(), want);
        assert_eq!(Isa::available().first(), Some(&Isa::Scalar));
        assert!(Isa::available().contains(&want));
    }
}
