"""The GPU service: samples NVML on its node and reports what it read, leaving
out whatever NVML did not give, and saying why when NVML is not there at all."""
