# %% [markdown]
# # NN · Title in a few words
#
# **Goal.** One or two sentences: what the learner can do after this notebook.
#
# **Prerequisites.** Notebooks this one builds on.
#
# **Runtime.** ci: ~N s, laptop: ~N min on 2 CPU cores; gpu: ~N s.

# %%
import matplotlib.pyplot as plt  # noqa: F401 - what most notebooks use
import torch
from torch import nn  # noqa: F401

from reidlab.lessons import setup
# from reidlab.lessons.checks import nbNN as checks   # this notebook's checkers, reidlab/lessons/checks/nbNN.py

# %% {"tags": ["nbval-ignore-output"]}
cfg = setup(seed=0)

# %% [markdown]
# ## 1. A claim, stated
#
# One paragraph of explanation, then a cell that *measures* the claim, then one sentence
# saying what to look at in the output.

# %% {"tags": ["nbval-check-output"]}
x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
print(f"mean of x: {x.mean():.4f}")

# %% [markdown]
# ## Summary
#
# - What you learned, one line each.
# - Pitfalls, one line each.
#
# ## Exercises
#
# **Exercise N.1 (a short title, easy).** The task: a function to write, and what the checker
# will verify.

# %% {"nbgrader": {"grade": false, "grade_id": "exN_1_solution", "locked": false, "schema_version": 3, "solution": true}}
def answer(x):
    ### BEGIN SOLUTION
    return x.mean()
    ### END SOLUTION

# %% {"nbgrader": {"grade": true, "grade_id": "exN_1_test", "locked": true, "points": 1, "schema_version": 3, "solution": false}, "tags": ["nbval-check-output"]}
# checks.check_something(answer)   # a @checker in reidlab/lessons/checks/nbNN.py that names the mistake

# %% [markdown]
# ## References
#
# - Papers and posts the claims above came from.
