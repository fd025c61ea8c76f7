"""``python -m moviegen.demo``: the stages are in moviegen.demo.pipeline."""
from moviegen.demo.pipeline import main

if __name__ == "__main__":
    main()
