# mmbalance: reproduce and compare balanced multimodal learning methods.
#
# Result paths (one grammar, written once in workflow/rules/common.smk):
#   resources/raw/{dataset}/                         downloads or the generated default
#   results/features/{dataset}/                      decoded once: frames, spectrograms, index
#   results/runs/{dataset}/{backbone}/{fusion}/{method}/{variant}/fold{fold}/   one training job
#   results/metrics/{dataset}/{backbone}/{fusion}.json   test metrics of every run of a panel
#   results/tables/ (papers/: the papers' tables, ours beside the published), results/figures/, results/summary.json
#
# The config is validated and every cell's settings resolved by mmbalance.config.
#
# Run: snakemake --cores all (profiles/default is picked up automatically).


from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/tuning.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
