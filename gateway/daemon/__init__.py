"""The daemon's wiring: the intake adapters, the spool workers, the registrar helper, the
background runners and the web register, started, reloaded and stopped together."""
