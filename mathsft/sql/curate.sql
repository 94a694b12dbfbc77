-- The curated SFT set, in one query over the scored shards ($files).
-- Keeps correct (reward >= $reward_threshold), finished (finish_reason = 'stop') traces, at most
-- $max_traces_per_problem per problem (shortest first), and splits train/val by problem id, which is a
-- content hash: every trace of a problem lands on the same side, so no val problem is trained on.
-- The final ORDER BY makes the output independent of file and thread order.
SELECT
    *,
    CASE
        WHEN (('0x' || substr(problem_id, 1, 8))::UBIGINT % 1000000) < $val_fraction * 1000000 THEN 'val'
        ELSE 'train'
    END AS split
FROM read_parquet($files)
WHERE reward >= $reward_threshold
  AND finish_reason = 'stop'
QUALIFY row_number() OVER (
    PARTITION BY problem_id ORDER BY completion_tokens, sample_index
) <= $max_traces_per_problem
ORDER BY problem_id, sample_index
