from prunelab.algorithms import PruningAlgorithm


class Broken(PruningAlgorithm)
    name = "broken-syntax"
