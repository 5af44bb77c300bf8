import os

from prunelab.algorithms import PruningAlgorithm


class KillsItsProcess(PruningAlgorithm):
    name = "broken-crash"

    def scores(self, weight, stats):
        os._exit(3)
