from .collector import StatsCollector

__all__ = ["StatsCollector"]
