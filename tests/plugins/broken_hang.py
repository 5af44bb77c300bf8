import time

from prunelab.algorithms import PruningAlgorithm


class Hangs(PruningAlgorithm):
    name = "broken-hang"

    def scores(self, weight, stats):
        while True:
            time.sleep(0.05)
