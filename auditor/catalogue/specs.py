"""Every metric family's facts, one tuple per stage, in the order the stages run.

A :class:`~auditor.metrics.MetricSpec` holds a family's name pattern, whether higher is better, its range, a
one-line definition and its reference. They are declared here rather than in the stages so that the report,
the gates and ``audit compare`` read them without importing a stage; each stage's ``specs`` is its tuple here
(``auditor.stages.order`` checks that every stage's tuple is in :data:`auditor.catalogue.CATALOGUE`, in run
order), and the names the report needs from a stage (the uniform-attention metrics, the calibration bins) are
here beside them.
"""

from __future__ import annotations

from auditor.metrics import MPRT_PASS_BELOW, MetricSpec

# clean (auditor.stages.clean)
ECE_BINS = 10
ENSEMBLE_ACCURACY = "clean.accuracy_ensemble"
SKLEARN = "scikit-learn metrics on the clean samples"
CLEAN_SPECS = (
    MetricSpec("clean.accuracy", True, "[0, 1]", "share of samples whose predicted class is the true class; for a "
               "model that is not deterministic, the mean over the draws of each draw's correctness (what one call "
               "of the model gets right)",
               reference=SKLEARN),
    MetricSpec(ENSEMBLE_ACCURACY, True, "[0, 1]",
               "a model that is not deterministic: the accuracy of the argmax of its mean probability over the draws "
               "(an ensemble of calls, which the deployed model is not; never gated by default)",
               reference="Athalye et al. 2018, Obfuscated Gradients Give a False Sense of Security (EOT)"),
    MetricSpec("clean.precision", True, "[0, 1]",
               "of the samples flagged as the positive class, the share that are (macro average over classes "
               "when there are more than two)",
               reference=SKLEARN),
    MetricSpec("clean.recall", True, "[0, 1]",
               "of the positive-class samples, the share flagged (macro average when more than two classes)",
               reference=SKLEARN),
    MetricSpec("clean.f1", True, "[0, 1]", "harmonic mean of precision and recall",
               reference=SKLEARN),
    MetricSpec("clean.roc_auc", True, "[0, 1]",
               "area under the ROC curve of the positive class's probability (one-vs-rest macro average "
               "when more than two classes)",
               reference=SKLEARN),
    MetricSpec("clean.ece", False, "[0, 1]",
               "expected calibration error: the predicted-class probability against the accuracy over 10 "
               "equal-width confidence bins, the bins weighted by their share of samples (Guo et al. 2017)",
               reference="Guo et al. 2017, On Calibration of Modern Neural Networks"),
)


# robustness (auditor.stages.robustness)
MADRY_CARLINI = "Madry et al. 2018; Carlini et al. 2019, On Evaluating Adversarial Robustness"
GHORBANI = "Ghorbani et al. 2019, Interpretation of Neural Networks is Fragile"
ROBUSTNESS_SPECS = (
    MetricSpec("robust.accuracy.worst@{eps}", True, "[0, 1]",
               "the headline (Croce & Hein 2020, as RobustBench reports it): share of all audited samples still "
               "classified correctly under every L-inf evasion attack that ran at eps (every standard L-inf "
               "attack, attention-guided, stealth and the targeted runs; not attention-shift or -hijack): a "
               "per-sample worst case, never above any single attack's value",
               reference="Croce & Hein 2020 (AutoAttack); Croce et al. 2021 (RobustBench): worst case per sample"),
    MetricSpec("robust.accuracy.worst-l2@{eps}", True, "[0, 1]",
               "the same worst case over the L2 attacks (pgd-l2, cw, deepfool) at L2 budget eps (--eps-l2)",
               reference="Croce & Hein 2020 (AutoAttack); Croce et al. 2021 (RobustBench): worst case per sample"),
    MetricSpec("robust.accuracy.worst-tokens@{eps}", True, "[0, 1]",
               "text: the same worst case over the label-preserving evasion attacks that ran at budget eps "
               "(--token-budget): typo and homoglyph editing at most eps words, and the substitutions of a "
               "--substitutions table (hotflip, exhaustive-substitution, attention-guided-sub, stealth-sub) "
               "changing at most eps tokens, none touching a protected word; hotflip-any (which may change the "
               "meaning) and embedding-pgd are not in it",
               reference="Croce & Hein 2020 (AutoAttack): worst case per sample; Gao et al. 2018 (DeepWordBug); "
                         "Morris et al. 2020 (Reevaluating Adversarial Examples in NLP)"),
    MetricSpec("robust.rationale_edits.{attack}@{eps}", False, "[0, 1]",
               "text, where the data records rationales (the phishing corpus): among the samples the attack "
               "broke, the share whose edit touched a rationale token (a token of the frame that decides the "
               "label). 0 by construction for every attack but hotflip-any, which may rewrite the deciding words",
               reference="Morris et al. 2020 (Reevaluating Adversarial Examples in NLP): constraints that keep "
                         "the meaning"),
    MetricSpec("robust.accuracy.{attack}@{eps}", True, "[0, 1]",
               "accuracy on the untargeted attack's adversarial examples at budget eps (all audited samples; "
               "L-inf attacks on the --eps grid, L2 attacks on --eps-l2; on text the substitution attacks at eps "
               "tokens changed (--token-budget) and embedding-pgd at eps times the mean embedding norm (--eps), "
               "a continuous relaxation no real text reaches)",
               reference=MADRY_CARLINI),
    MetricSpec("robust.accuracy.{attack}-targeted@{eps}", True, "[0, 1]",
               "with --target-class: accuracy on the adversarial examples of the attack aimed at the target "
               "class (all audited samples)",
               reference=MADRY_CARLINI),
    MetricSpec("robust.attack_success_rate.{attack}@{eps}", False, "[0, 1]",
               "among samples classified correctly when clean, the share the attack makes misclassified",
               reference=MADRY_CARLINI),
    MetricSpec("robust.evasion_rate.{attack}@{eps}", False, "[0, 1]",
               "binary detectors: among positive-class samples detected when clean, the share the attack turns "
               "into the negative class (the malicious sample passing as benign)",
               reference=MADRY_CARLINI),
    MetricSpec("robust.targeted_success_rate.{attack}@{eps}", False, "[0, 1]",
               "with --target-class: among samples outside the target class classified correctly when clean, the "
               "share the targeted attack moves into the target class",
               reference=MADRY_CARLINI),
)
STABILITY_SPECS = (
    MetricSpec("stability.topk_intersection.{attack}@{eps}", True, "[0, 1]",
               "share of the clean top-k attended tokens (k = 5) still in the top-k under the attention attack",
               reference=GHORBANI),
    MetricSpec("stability.spearman.{attack}@{eps}", True, "[-1, 1]",
               "Spearman rank correlation between clean and attacked attention over tokens",
               reference=GHORBANI),
    MetricSpec("stability.jsd.{attack}@{eps}", False, "[0, ln 2]",
               "Jensen-Shannon divergence between clean and attacked attention, in nats",
               reference=GHORBANI),
    MetricSpec("stability.prediction_kept.{attack}@{eps}", True, "[0, 1]",
               "share of samples whose predicted class the attention attack left unchanged",
               reference=GHORBANI),
    MetricSpec("stability.hijack_success.{attack}@{eps}", False, "[0, 1]",
               "attention-hijack (-sub on text): share of samples whose target tokens all entered the attacked "
               "top-k",
               reference=GHORBANI),
)


# masking (auditor.stages.masking)
MASKING_SPECS = (
    MetricSpec("robust.masking_suspected", False, "{0, 1}",
               "1 when a sign of gradient masking was found (pgd weaker than fgsm, pgd failing with the whole box "
               "allowed, square beating pgd by more than 0.05), 0 when every such check that ran passed",
               reference="Athalye et al. 2018; Carlini et al. 2019, On Evaluating Adversarial Robustness"),
    MetricSpec("robust.not_converged", False, "{0, 1}",
               "1 when more effort keeps lowering robust accuracy (pgd with 5x the steps and 2x the restarts lower by more "
               "than max(0.02, 3/n), or an attack's accuracy rising with eps), 0 when every such check passed",
               reference="Carlini et al. 2019, On Evaluating Adversarial Robustness; Croce & Hein 2020"),
)


# faithfulness (auditor.stages.faithfulness)
FAITHFULNESS_SPECS = (
    MetricSpec("faithfulness.deletion_auc.{explainer}", False, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are replaced by "
               "the baseline, one by one (x-axis: fraction of features removed)",
               reference="Petsiuk et al. 2018 (RISE), deletion metric"),
    MetricSpec("faithfulness.insertion_auc.{explainer}", True, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are restored into "
               "the baseline, one by one",
               reference="Petsiuk et al. 2018 (RISE), insertion metric"),
    MetricSpec("faithfulness.deletion_auc_diff.attention~{explainer}", True, "[-1, 1]",
               "paired difference, per sample: the other explainer's deletion AUC minus attention's, for every "
               "explainer whose deletion curve ran beside attention's (above 0: attention is more faithful); its "
               "interval is the paired bootstrap over the same resamples as every metric, so a comparison is "
               "called only when the interval excludes 0",
               reference="Petsiuk et al. 2018 (RISE) deletion, as a paired per-sample difference with a paired bootstrap interval (Efron & Tibshirani 1993)"),
    MetricSpec("faithfulness.deletion_gain.{explainer}", True, "(-inf, 1]",
               "1 - deletion AUC / mean deletion AUC of 8 random feature rankings of the same sample (above 0: "
               "removing the explainer's top features hurts the prediction sooner than chance)",
               reference="Petsiuk et al. 2018, relative to the random explainer"),
    MetricSpec("faithfulness.comprehensiveness.{explainer}", True, "[-1, 1]",
               "ERASER AOPC: mean over k = 1, 5, 10, 20, 50% of features (rounded up, at least one) of p_y(x) - "
               "p_y(x with its top-k features at the baseline)",
               reference="DeYoung et al. 2020 (ERASER)"),
    MetricSpec("faithfulness.sufficiency.{explainer}", False, "[-1, 1]",
               "ERASER AOPC: mean over the same k of p_y(x) - p_y(x with only its top-k features kept, the rest at "
               "the baseline)",
               reference="DeYoung et al. 2020 (ERASER)"),
    MetricSpec("faithfulness.correlation.{explainer}", True, "[-1, 1]",
               "Bhatt et al. 2020: Pearson correlation over 64 random subsets of 20% of the features between the "
               "subset's attribution sum and the drop in p_y when the subset is set to the baseline (samples where "
               "either side is constant do not count; n says how many did)",
               reference="Bhatt et al. 2020, Evaluating and Aggregating Feature-based Explanations"),
    MetricSpec("faithfulness.infidelity.{explainer}", False, "[0, inf)",
               "infidelity (Yeh et al. 2019) of p_y with captum's perturbations: mean squared error between "
               "beta * sum_i a_i eps_i and the drop in p_y when each feature moves a fraction eps_i ~ N(0, 0.1^2) "
               "toward the baseline (16 draws), beta >= 0 the least-squares scale (sign-aware: a negated "
               "attribution explains nothing)",
               reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
    MetricSpec("stability.max_sensitivity.{explainer}", False, "[0, inf)",
               "captum sensitivity_max (Yeh et al. 2019): largest relative change ||e(x) - e(x')|| / ||e(x)|| of "
               "the explanation over 8 inputs x' drawn uniformly within 0.02 (L-inf, [0,1] units) of x; not for "
               "random, 0 by construction (its draws ignore the input)",
               reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
)


# agreement (auditor.stages.agreement)
AGREEMENT_SPECS = (
    MetricSpec("agreement.kendall_tau.integrated-gradients~feature-ablation", True, "[-1, 1]",
               "the agreement noise floor (Neely et al. 2022): Kendall's tau-b between the two references' token "
               "rankings on the same samples, how far two sound explainers agree with each other",
               reference="Neely et al. 2022, A Song of (Dis)agreement: Evaluating the Evaluation of Explainable AI"),
    MetricSpec("agreement.kendall_tau_vs_floor.{explainer}", True, "[-2, 2]",
               "per sample, the attention explainer's Kendall tau-b with the references (mean over "
               "integrated-gradients and feature-ablation) minus the references' tau-b with each other; upper "
               "end of the interval below 0: attention agrees with the references clearly less than they agree "
               "with each other",
               reference="Neely et al. 2022, A Song of (Dis)agreement; Jain & Wallace 2019"),
    MetricSpec("agreement.kendall_tau.{explainer}~{reference}", True, "[-1, 1]",
               "Kendall's tau-b between the attention explainer's and the reference's token rankings (each "
               "attribution summed in absolute value over a token's inputs), mean over samples (Jain & Wallace "
               "2019); reference: integrated-gradients or feature-ablation",
               reference="Krishna et al. 2022, The Disagreement Problem in Explainable ML"),
    MetricSpec("agreement.topk_overlap.{explainer}~{reference}", True, "[0, 1]",
               "share of the attention explainer's top-k tokens (k = min(5, tokens)) that are also in the "
               "reference's top-k",
               reference="Krishna et al. 2022, The Disagreement Problem in Explainable ML"),
)


# sanity (auditor.stages.sanity)
SANITY_SPECS = (
    MetricSpec("sanity.mprt.{explainer}", False, "[0, 1]",
               "Adebayo et al. 2018 cascading model-parameter randomisation: absolute Spearman rank correlation "
               "between the explanations of the trained model and of the model with every layer re-initialised "
               "(top-down), over the input's positions (text: the message's own tokens), the same random draws at "
               "every step; passes when the upper end of its 95% interval "
               f"is below {MPRT_PASS_BELOW:g}, fails when the lower end is at or above it (high = the explanation "
               "ignores the model)",
               reference="Adebayo et al. 2018, Sanity Checks for Saliency Maps"),
    MetricSpec("sanity.flip_rate.attention", True, "[0, 1]",
               "Serrano & Smith 2019: share of samples whose decision flips when the highest CLS attention weight "
               "of the last layer is zeroed and the row renormalised (compare with sanity.flip_rate.random)",
               reference="Serrano & Smith 2019, Is Attention Interpretable?"),
    MetricSpec("sanity.flip_rate.random", False, "[0, 1]",
               "the same when a random non-CLS weight (on text: of a message token) is zeroed instead: the chance level that "
               "sanity.flip_rate.attention should exceed",
               reference="Serrano & Smith 2019, Is Attention Interpretable?"),
    MetricSpec("sanity.uniform_attention.prediction_kept", False, "[0, 1]",
               "Wiegreffe & Pinter 2019: share of samples whose predicted class is unchanged when every attention "
               "layer's weights are replaced by uniform weights over the keys each query may attend (all layers at "
               "once, inside the forward); lower: the decisions rest on attention; at or above 0.95 attention does not "
               "drive the model, so heat maps of it explain little",
               reference="Wiegreffe & Pinter 2019, Attention is not not Explanation"),
    MetricSpec("sanity.uniform_attention.accuracy", False, "[0, 1]",
               "accuracy with every attention layer made uniform as in sanity.uniform_attention.prediction_kept; "
               "far below clean.accuracy: the model needs its attention, close to it: it does not",
               reference="Wiegreffe & Pinter 2019, Attention is not not Explanation"),
)
FLIP_RATE_METRICS = tuple(spec.pattern for spec in SANITY_SPECS if spec.pattern.startswith("sanity.flip_rate."))
UNIFORM_METRICS = tuple(spec.pattern for spec in SANITY_SPECS if spec.pattern.startswith("sanity.uniform_attention."))

# at or above this share of predictions kept under uniform attention, attention does not drive the model
UNUSED_ATTENTION_KEPT = 0.95


# trust (auditor.stages.trust)
TRUST_SPECS = (
    MetricSpec("trust.hidden_importance.{explainer}", False, "[0, 1]",
               "Pruthi et al. 2020: share of samples whose most erasure-important token (largest drop in log p_y "
               "when that token's inputs alone are set to the removal baseline; samples where no erasure lowers "
               "it do not count) gets less than a uniform share 1/T of the explainer's attribution mass (sum of "
               "|attribution| over each token's inputs, normalised over the T tokens that cover inputs, CLS "
               "excluded)",
               reference="Pruthi et al. 2020, Learning to Deceive with Attention-Based Explanations"),
)


# localisation (auditor.stages.localisation)
LOCALISATION_SPECS = (
    MetricSpec("localisation.precision_at_k.{explainer}", True, "[0, 1]",
               "on data with known relevant features: share of the k top-attributed features that are truly "
               "relevant (k = number of relevant features of the sample)",
               reference="Arras et al. 2022, CLEVR-XAI (relevance rank accuracy)"),
    MetricSpec("localisation.plausibility.{explainer}", True, "[0, 1]",
               "on text with rationales: area under the precision-recall curve (sklearn average_precision_score) "
               "of the message's token attributions against its rationale tokens ([CLS] and padding left out; "
               "messages whose tokens are all or none rationale do not count)",
               reference="Attanasio et al. 2023, ferret (AUPRC plausibility); DeYoung et al. 2020, ERASER"),
)


# sparsity (auditor.stages.sparsity)
SPARSITY_SPECS = (
    MetricSpec("attention.zero_share", None, "[0, 1)",
               "share of exactly-zero weights in the last layer's CLS attention row (over every token, CLS "
               "included; mean over heads, then samples; every query row for models without CLS): about 0 for "
               "softmax and additive attention, the share of tokens outside the support for sparsemax/entmax15, "
               "where the gradient is exactly 0 too"),
    MetricSpec("attention.entropy", None, "[0, ln tokens]",
               "Shannon entropy -sum p ln p (nats, 0 ln 0 = 0) of the same rows, mean over heads, then samples: 0 "
               "when each head attends to one token, ln(tokens) when uniform"),
)
SPARSITY_METRICS = tuple(spec.pattern for spec in SPARSITY_SPECS)
