//! How byte counts and rates are written, wherever leakprobe writes them (the summary's
//! tables, the verdict's next steps).

/// Bytes per MiB.
const MIB: f64 = (1 << 20) as f64;

/// Bytes as MiB with one decimal (`12.5`).
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// A signed rate of bytes in MiB, two decimals (`+0.25 MiB`): the summary's columns, which
/// line up on one unit.
pub fn rate_mib(bytes_per_s: f64) -> String {
    format!("{:+.2} MiB", bytes_per_s / MIB)
}

/// A signed rate of bytes in the unit that reads best: KiB below one MiB (`+229 KiB`), else
/// MiB (`+1.50 MiB`).
pub fn rate(bytes_per_s: f64) -> String {
    match bytes_per_s.abs() < MIB {
        true => format!("{:+.0} KiB", bytes_per_s / 1024.0),
        false => rate_mib(bytes_per_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_kib_below_a_mib_and_in_mib_from_one() {
        assert_eq!(rate(229.0 * 1024.0), "+229 KiB");
        assert_eq!(rate(-12.0 * 1024.0), "-12 KiB");
        assert_eq!(rate(1.5 * MIB), "+1.50 MiB");
        assert_eq!(rate_mib(0.25 * MIB), "+0.25 MiB");
        assert_eq!(mib(3 << 19), "1.5");
    }
}
