from prunelab.algorithms import PruningAlgorithm


class Raises(PruningAlgorithm):
    name = "broken-exception"

    def scores(self, weight, stats):
        raise RuntimeError("boom from the plug-in")
