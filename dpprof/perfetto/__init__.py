"""One Perfetto timeline of every rank: merged traces on one clock, NVML counters and dpprof's attribution as
tracks (``merge``), and a loopback server that opens it in ui.perfetto.dev (``serve``). No torch."""
