"""Analysis stage: traces -> per-step, per-device attribution -> diagnosis (plain frozen data)."""
