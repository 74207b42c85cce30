"""The scheduler core: pure policy, no I/O and no clock (``scheduler.SchedulerCore``), its
policies and queues, the job model and the GPU resource presets it reasons with."""
