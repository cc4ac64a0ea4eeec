//! Size units and CPU sets as libvirt spells them.
//!
//! - [`to_kib`]: `unit='…'` scaling of memory sizes. libvirt accepts `b`/`bytes`, a power of
//!   1024 (`k`, `KiB`, `M`, `MiB`, … `E`, `EiB`, case-insensitive first letter) or a power of
//!   1000 (`KB`, `MB`, … `EB`); no unit means KiB. The result is rounded up to whole KiB and
//!   must fit in a signed 64-bit byte count, as in libvirt.
//! - [`canonical_cpuset`]: `cpuset='0-3,^2,8'` syntax, re-formatted canonically (`0-1,3,8`) as
//!   libvirt does when it writes the XML back.

/// The largest memory size libvirt accepts, in bytes (`LLONG_MAX`).
const MAX_BYTES: u64 = i64::MAX as u64;

/// The highest CPU number a `cpuset` may name (libvirt's `VIR_DOMAIN_CPUMASK_LEN`).
const MAX_CPU: usize = 16384;

/// Converts `value` in `unit` (default KiB) to KiB, rounding up.
pub fn to_kib(value: u64, unit: Option<&str>) -> Result<u64, String> {
    let scale: u64 = match unit {
        None | Some("") => 1024,
        Some(u)
            if u.eq_ignore_ascii_case("b")
                || u.eq_ignore_ascii_case("byte")
                || u.eq_ignore_ascii_case("bytes") =>
        {
            1
        }
        Some(u) => {
            let mut chars = u.chars();
            let first = chars.next().map(|c| c.to_ascii_lowercase());
            let rest = chars.as_str();
            let base: u64 = if rest.is_empty() || rest.eq_ignore_ascii_case("ib") {
                1024
            } else if rest.eq_ignore_ascii_case("b") {
                1000
            } else {
                return Err(format!("unknown memory unit '{u}'"));
            };
            let power = match first {
                Some('k') => 1,
                Some('m') => 2,
                Some('g') => 3,
                Some('t') => 4,
                Some('p') => 5,
                Some('e') => 6,
                _ => return Err(format!("unknown memory unit '{u}'")),
            };
            base.pow(power)
        }
    };
    if value != 0 && value > MAX_BYTES / scale {
        return Err(format!(
            "memory size {value} {} is too large",
            unit.unwrap_or("KiB")
        ));
    }
    Ok((value * scale).div_ceil(1024))
}

/// Parses a libvirt CPU set (`0-3,^2,8`) and returns its canonical spelling (`0-1,3,8`).
pub fn canonical_cpuset(text: &str) -> Result<String, String> {
    const WORDS: usize = MAX_CPU / 64;
    let mut set = [0u64; WORDS];
    let bad = || format!("invalid cpuset '{text}': expected CPU numbers and ranges such as 0-3,^2,8");
    let parse_cpu = |s: &str| -> Result<usize, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: usize = s.parse().map_err(|_| bad())?;
        if n >= MAX_CPU {
            return Err(format!(
                "invalid cpuset '{text}': CPU {n} is above the limit of {}",
                MAX_CPU - 1
            ));
        }
        Ok(n)
    };
    for item in text.split(',') {
        let item = item.trim();
        if let Some(neg) = item.strip_prefix('^') {
            let n = parse_cpu(neg)?;
            set[n / 64] &= !(1u64 << (n % 64));
        } else {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
                None => {
                    let n = parse_cpu(item)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(bad());
            }
            for n in a..=b {
                set[n / 64] |= 1u64 << (n % 64);
            }
        }
    }
    let is_set = |n: usize| set[n / 64] & (1u64 << (n % 64)) != 0;
    let mut out = String::new();
    let mut n = 0;
    while n < MAX_CPU {
        if set[n / 64] == 0 {
            n = (n / 64 + 1) * 64;
            continue;
        }
        if !is_set(n) {
            n += 1;
            continue;
        }
        let start = n;
        while n + 1 < MAX_CPU && is_set(n + 1) {
            n += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == n {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{n}"));
        }
        n += 1;
    }
    if out.is_empty() {
        return Err(format!("invalid cpuset '{text}': it names no CPU"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_like_libvirt() {
        assert_eq!(to_kib(4, None), Ok(4));
        assert_eq!(to_kib(4, Some("KiB")), Ok(4));
        assert_eq!(to_kib(4, Some("k")), Ok(4));
        assert_eq!(to_kib(2, Some("GiB")), Ok(2 * 1024 * 1024));
        assert_eq!(to_kib(2, Some("g")), Ok(2 * 1024 * 1024));
        assert_eq!(to_kib(1, Some("MB")), Ok(977)); // 1_000_000 bytes rounded up
        assert_eq!(to_kib(1, Some("b")), Ok(1));
        assert_eq!(to_kib(2048, Some("bytes")), Ok(2));
        assert_eq!(to_kib(1, Some("TiB")), Ok(1 << 30));
    }

    #[test]
    fn unknown_or_oversized_units_are_refused() {
        assert!(to_kib(1, Some("XiB")).is_err());
        assert!(to_kib(1, Some("Mbit")).is_err());
        assert!(to_kib(u64::MAX, Some("EiB")).is_err());
        assert!(to_kib(16, Some("EiB")).is_err());
    }

    #[test]
    fn cpusets_are_canonical() {
        assert_eq!(canonical_cpuset("0-1").as_deref(), Ok("0-1"));
        assert_eq!(canonical_cpuset("0,1,2,5").as_deref(), Ok("0-2,5"));
        assert_eq!(canonical_cpuset("0-3,^2,8").as_deref(), Ok("0-1,3,8"));
        assert!(canonical_cpuset("").is_err());
        assert!(canonical_cpuset("3-1").is_err());
        assert!(canonical_cpuset("^1").is_err());
        assert!(canonical_cpuset("99999").is_err());
        assert!(canonical_cpuset("a").is_err());
    }
}
