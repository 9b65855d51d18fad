"""``python -m fl_lessons.flower``: run the course's Flower app on a loopback federation (notebook 07)."""

from .deploy import main

main()
