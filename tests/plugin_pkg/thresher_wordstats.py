from thresher.api import BatchOutcome, Field, MapStage, StageParams, pa, pc


class WordCountParams(StageParams):
    min_words: int = Field(0, ge=0, description="Drop rows with fewer words.")


class WordCount(MapStage[WordCountParams]):
    name, summary = "word-count", "Add n_words; drop rows under --min-words."

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        words = pc.list_value_length(pc.utf8_split_whitespace(batch.column("text")))
        short = pc.less(words, self.params.min_words)
        return BatchOutcome.drop_rows(batch.append_column("n_words", words), short, "too_few_words")
