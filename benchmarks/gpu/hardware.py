"""The GPU's nominal peak memory bandwidth: from NVML (memory clock x bus width), else a table."""

from __future__ import annotations

# Vendor datasheet peak memory bandwidth (GB/s); more specific names first.
DATASHEET_BANDWIDTH_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
                           "A100": 1555.0, "L40S": 864.0, "A10G": 600.0, "L4": 300.0}


def nvml_bandwidth(index: int = 0) -> dict:
    """``{"driver", "peak_bandwidth_gbs_nvml", "memory_clock_mhz", "memory_bus_bits"}`` as far as
    NVML (``pynvml``) tells; ``{"nvml_error": ...}`` when it cannot."""
    try:
        import pynvml
    except ImportError:
        return {"nvml_error": "pynvml is not installed"}
    facts = {}
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        driver = pynvml.nvmlSystemGetDriverVersion()
        facts["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        # Double data rate: two transfers per clock on each line of the bus.
        facts["peak_bandwidth_gbs_nvml"] = round(2 * clock_mhz * 1e6 * bus_bits / 8 / 1e9, 1)
        facts["memory_clock_mhz"], facts["memory_bus_bits"] = clock_mhz, bus_bits
    except Exception as error:  # NVML is a convenience: its failure only costs these fields
        facts["nvml_error"] = str(error)
    return facts


def datasheet_bandwidth(name: str) -> float | None:
    return next((value for key, value in DATASHEET_BANDWIDTH_GBS.items() if key in name), None)


def peak_bandwidth_gbs(name: str) -> tuple[float | None, str]:
    """(GB/s, where the number comes from) for the GPU called ``name``."""
    nvml = nvml_bandwidth().get("peak_bandwidth_gbs_nvml")
    if nvml:
        return nvml, "NVML: memory clock x bus width"
    sheet = datasheet_bandwidth(name)
    return sheet, ("datasheet" if sheet else "unknown")
