"""The signs the :class:`~lrkit.doctor.Doctor` looks for, one small class (and file) each.

Each sign keeps its own state, raises a :class:`Finding` (verdict, onset, evidence), explains it
(advice, message) and saves itself in the Doctor's ``state_dict``. The Doctor lists them in rank
order in ``Doctor._build_signs`` and reports the most severe finding. A new sign is one new file
here and one line in that list.

=====================  ==========================  =============================================
sign                   verdict                     file
=====================  ==========================  =============================================
:class:`NonFinite`     ``nan``                     ``nonfinite.py``
:class:`LossRise`      ``diverging``               ``diverging.py``
:class:`GradientExplosion`  ``diverging``          ``gradient.py``
:class:`RaisedAndHeld` ``diverging``              ``lr_held.py``
:class:`EarlyBlowUp`   ``diverging``               ``early_blowup.py``
:class:`AtChance`      ``diverging``               ``chance.py``
:class:`Dead`          ``diverging``               ``dead.py``
:class:`BehindReference`  ``diverging``            ``behind.py``
:class:`LossSpikes`    ``fluctuating``             ``fluctuating.py``
:class:`MetricSwing`   ``fluctuating``             ``metric_swing.py``
:class:`Flat`          ``flat`` (``diverging``)    ``flat.py``
:class:`Overfitting`   ``overfitting`` (info)      ``overfitting.py``
:class:`Converged`     ``converged`` (info)        ``converged.py``
=====================  ==========================  =============================================
"""
from lrkit.doctor.signs._base import Finding, Observation, Sign, Track
from lrkit.doctor.signs.behind import BehindReference
from lrkit.doctor.signs.chance import AtChance
from lrkit.doctor.signs.converged import Converged
from lrkit.doctor.signs.dead import Dead
from lrkit.doctor.signs.diverging import LossRise
from lrkit.doctor.signs.early_blowup import EarlyBlowUp
from lrkit.doctor.signs.flat import Flat
from lrkit.doctor.signs.fluctuating import LossSpikes
from lrkit.doctor.signs.gradient import GradientExplosion
from lrkit.doctor.signs.lr_held import RaisedAndHeld
from lrkit.doctor.signs.metric_swing import MetricSwing
from lrkit.doctor.signs.nonfinite import NonFinite
from lrkit.doctor.signs.overfitting import Overfitting

__all__ = [
    "Finding",
    "Observation",
    "Sign",
    "Track",
    "NonFinite",
    "LossRise",
    "GradientExplosion",
    "RaisedAndHeld",
    "EarlyBlowUp",
    "AtChance",
    "Dead",
    "BehindReference",
    "LossSpikes",
    "MetricSwing",
    "Flat",
    "Overfitting",
    "Converged",
]
