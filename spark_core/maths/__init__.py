"""The maths of the method, pure functions on tensors: GRPO's advantages and clipped loss
(`grpo`), the judge's label weighting and expected rewards (`judge_reward`), and the teacher-
forced probability of the right verdict (`verdict_prob`)."""
