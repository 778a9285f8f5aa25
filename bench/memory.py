"""Process memory for the benchmarks (Linux): current and peak resident set, and a reset of the peak so set-up
temporaries (randn, casts, a model built in fp32 then cast) do not count as the measured step's memory."""


def rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process, MiB."""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) / 1024


def reset_peak_rss():
    """Start the peak (VmHWM) afresh at the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
