"""Past one machine on MLX's own distributed engine (mx.distributed, started by `mlx.launch`).

    world.py     a rank's World and the collectives the jobs use (MLX)
    spread.py    item-by-item work (a build's generations, an eval's rewrites) in rounds over the ranks
    settings.py  --nproc / --hosts, shared by every verb that runs on several ranks (no MLX)
    launch.py    the job's own process: runs `mlx.launch` over the ranks and reports each (no MLX)

Nothing is imported here, so the settings load without MLX."""
