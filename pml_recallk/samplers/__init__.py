"""Samplers, as in PML's ``samplers`` package: class-balanced global batches split over the ranks of a job."""

from .distributed_m_per_class_sampler import DistributedMPerClassSampler, SeededItems

__all__ = ["DistributedMPerClassSampler", "SeededItems"]
