"""Codec primitives: re-encoding, motion vectors, residuals, sampling and the token budget."""

from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.codec.extract import (Primitives, SampledFrame, extract_primitives,
                                    iter_sampled_frames, iter_video, save_npz)
from cope_jax.codec.motion import MotionGrid, warp_reference
from cope_jax.codec.probe import inspect_video
from cope_jax.codec.reencode import EncodeSpec, conformance_problems, conformant_video, reencode
from cope_jax.codec.sampling import (DELTA, KEYFRAME, SamplingConfig, SamplingPlan,
                                     frame_change, plan_positions, token_budget, visual_tokens)
