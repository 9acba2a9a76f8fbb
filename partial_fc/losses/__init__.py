"""Pair, triplet and agent losses over the global batch of all data-parallel ranks."""

from partial_fc.losses.agent_modules import CContrastiveLoss, CTripletLoss
from partial_fc.losses.contrastive import ContrastiveLoss
from partial_fc.losses.mining import mine_triplets
from partial_fc.losses.triplet import TripletLoss

__all__ = ["TripletLoss", "ContrastiveLoss", "CContrastiveLoss", "CTripletLoss", "mine_triplets"]
