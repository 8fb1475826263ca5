//! Which key the next operation touches: uniform or zipfian over `[0, keys)`.

use rand::Rng;
use rand_distr::{Distribution, Zipf};

#[derive(Clone, Debug, PartialEq)]
pub enum KeyDist {
    Uniform,
    /// Zipf with exponent `s` (0.99 is the YCSB default): a few keys take most of the load.
    Zipf(f64),
}

impl std::str::FromStr for KeyDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        if let Some(exp) = s.strip_prefix("zipf:") {
            let e: f64 = exp.parse().map_err(|_| format!("bad zipf exponent {exp:?}"))?;
            if !(e > 0.0 && e < 10.0) {
                return Err(format!("zipf exponent must be in (0, 10), not {e}"));
            }
            return Ok(KeyDist::Zipf(e));
        }
        Err(format!("unknown key distribution {s:?}: use uniform or zipf:<exponent>"))
    }
}

/// Draws key numbers in `[0, keys)`.
pub struct KeyGen {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyGen {
    pub fn new(dist: &KeyDist, keys: u64) -> KeyGen {
        let keys = keys.max(1);
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf(s) => {
                Some(Zipf::new(keys, *s).expect("zipf parameters checked when parsed"))
            }
        };
        KeyGen { keys, zipf }
    }

    pub fn next<R: Rng>(&self, rng: &mut R) -> u64 {
        match &self.zipf {
            // Zipf draws 1..=n, rank 1 the most popular.
            Some(z) => (z.sample(rng) as u64).clamp(1, self.keys) - 1,
            None => rng.gen_range(0..self.keys),
        }
    }
}

/// The name of key number `n`. With a prefix, `{prefix}{n:010}`: every key shares it, so they
/// start in one partition (as most applications' keys do: `orders/…`) until load splits it.
/// Without one, two printable characters from a hash of `n` come first, so keys spread over
/// the whole key space, and so over every partition, as a cluster's many tenants' keys would.
pub fn key_name(prefix: Option<&str>, n: u64) -> String {
    match prefix {
        Some(p) => format!("{p}{n:010}"),
        None => {
            // splitmix64: consecutive numbers land far apart.
            let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let c = |x: u64| (0x21 + (x % 94) as u8) as char;
            format!("{}{}/bench/{n:010}", c(z), c(z >> 8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn draws_stay_in_bounds_and_zipf_is_skewed() {
        let mut rng = SmallRng::seed_from_u64(7);
        for dist in [KeyDist::Uniform, KeyDist::Zipf(0.99), KeyDist::Zipf(2.0)] {
            let g = KeyGen::new(&dist, 1000);
            for _ in 0..20_000 {
                assert!(g.next(&mut rng) < 1000);
            }
        }
        let g = KeyGen::new(&KeyDist::Zipf(0.99), 1000);
        let hot = (0..20_000).filter(|_| g.next(&mut rng) < 10).count();
        // Under zipf(0.99) the top 1% of keys take far more than 1% of draws.
        assert!(hot > 20_000 / 10, "{hot}");
        // Spread names cover the printable first bytes; prefixed ones share the prefix.
        let firsts: std::collections::HashSet<u8> =
            (0..2000).map(|n| key_name(None, n).into_bytes()[0]).collect();
        assert!(firsts.len() > 80, "{}", firsts.len());
        assert_eq!(key_name(Some("orders/"), 7), "orders/0000000007");
        assert_ne!(key_name(None, 1), key_name(None, 2));
        let one = KeyGen::new(&KeyDist::Zipf(0.99), 1);
        assert_eq!(one.next(&mut rng), 0);
    }

    #[test]
    fn parses_distributions() {
        assert_eq!("uniform".parse::<KeyDist>(), Ok(KeyDist::Uniform));
        assert_eq!("zipf:0.99".parse::<KeyDist>(), Ok(KeyDist::Zipf(0.99)));
        assert!("zipf:-1".parse::<KeyDist>().is_err());
        assert!("pareto".parse::<KeyDist>().is_err());
    }
}
