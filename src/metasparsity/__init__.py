"""metasparsity: learned channel-wise sparsity for multi-task vision networks.

The shared backbone of a multi-task network is pushed to channel-wise (input-channel group)
sparsity by a group-lasso penalty whose strength λ = exp(ρ) is learned by MAML-style
meta-learning over combinations of tasks; the learned zeros are then cut out into a physically
smaller network.  See the README, "The method", for the maths.
"""

__version__ = "0.1.0"
