"""Jetson helpers: device state (module, JetPack, power mode, clocks, temperatures), a tolerant
tegrastats parser and sampler for power and energy, and jetson_clocks around a measurement.

Device-side, standard library only (plus ``common``), Python 3.8; on a machine that is not a
Jetson every helper answers "not a Jetson" cleanly: ``None`` fields, or a ToolkitError from the
helpers that must change something.
"""
