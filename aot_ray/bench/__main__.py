"""`python -m aot_ray.bench`: the trainer's benchmark (trainer.py)."""

from .trainer import main

if __name__ == "__main__":  # not in --pack's spawned processes, which import this module as __mp_main__
    main()
