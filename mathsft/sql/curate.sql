-- The curation of the SFT set, in one query over the scored shards ($files): every trace, annotated with
-- the stage where it left the funnel (stage) and the side of the split its problem is on (split).
-- mathsft/curate.py counts the funnel from this and writes the traces whose stage is 'kept'.
--
--   wrong       reward below $reward_threshold (or missing)
--   unfinished  finish_reason is not 'stop' (cut at max_tokens, or no reason)
--   too_long    prompt_tokens + completion_tokens (the teacher's counts) > $max_length: dropped, never
--               truncated, since a cut trace teaches the model to stop mid-answer
--   over_cap    beyond $max_traces_per_problem of this problem's surviving traces, in the order of
--               $selection: 'shortest' (fewest completion tokens first) or 'random' (an md5 of
--               $seed, problem id and sample index: the same for a seed on any machine or DuckDB version)
--   kept        the rest
--
-- The split is by problem id, a hex content hash: every trace of a problem lands on the same side, so no
-- val problem is trained on. Every order has a unique last key (sample_index), so the result does not
-- depend on file order or thread count.
WITH traces AS (
    SELECT
        *,
        file_index, file_row_number,  -- where the trace lies, to fetch its texts later
        CASE
            WHEN NOT coalesce(reward >= $reward_threshold, false) THEN 'wrong'
            WHEN finish_reason IS DISTINCT FROM 'stop' THEN 'unfinished'
            WHEN NOT coalesce(prompt_tokens + completion_tokens <= $max_length, false) THEN 'too_long'
        END AS dropped_for
    FROM read_parquet($files)
)
SELECT
    *,
    CASE
        WHEN dropped_for IS NOT NULL THEN dropped_for
        -- Ranked among the problem's surviving traces only (the partition's second key).
        WHEN row_number() OVER (
            PARTITION BY problem_id, dropped_for IS NULL
            ORDER BY
                CASE WHEN $selection = 'shortest' THEN completion_tokens END,
                CASE WHEN $selection = 'random' THEN md5(concat_ws(':', $seed, problem_id, sample_index)) END,
                sample_index
        ) > $max_traces_per_problem THEN 'over_cap'
        ELSE 'kept'
    END AS stage,
    CASE
        WHEN (('0x' || substr(problem_id, 1, 8))::UBIGINT % 1000000) < $val_fraction * 1000000 THEN 'val'
        ELSE 'train'
    END AS split
FROM traces
