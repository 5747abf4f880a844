//! The process's own figures, under the names Prometheus's client libraries use: CPU seconds,
//! resident and virtual memory, open files. Read from `/proc/self` when rendered.

use std::fmt::Write;

/// The figures as Prometheus text (Linux; elsewhere, nothing).
pub(super) fn text() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    // The fields after the command, which may hold spaces, in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return out;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Numbered as proc(5) numbers them: the state, after the command, is field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let mut series = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let cpu = (utime + stime) as f64 / ticks;
        series(
            "process_cpu_seconds_total",
            "counter",
            "CPU time used, user and system",
            cpu,
        );
    }
    if let Some(vsize) = field(23) {
        series(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size",
            vsize as f64,
        );
    }
    if let Some(rss) = field(24) {
        series(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size",
            rss as f64 * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        series(
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            fds.count() as f64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_reports_its_cpu_and_memory() {
        let text = super::text();
        let value = |name: &str| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_open_fds") >= 3.0);
    }
}
