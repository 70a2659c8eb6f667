//! "See what the model sees": per example, its ids, token pieces and loss
//! mask, serializable for `ft data render`.

use serde::{Deserialize, Serialize};

use crate::encode::EncodedExample;
use crate::error::Result;
use crate::format::Format;
use crate::jsonl::Source;
use crate::tokenizer::TextTokenizer;

/// One example as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedExample {
    /// Where it came from.
    pub source: Source,
    /// Its format.
    pub format: Format,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Vocabulary piece of each token (`Ġthe`, `▁the`, `<0x0A>`, `<|im_end|>`).
    pub pieces: Vec<String>,
    /// Text each token adds to the decoded sequence (a byte piece that ends
    /// mid-character shows as `�`).
    pub texts: Vec<String>,
    /// Loss mask: true where the token is a target.
    pub mask: Vec<bool>,
    /// The whole sequence decoded, special tokens included.
    pub text: String,
    /// Only the target tokens decoded, one string per contiguous run.
    pub targets: Vec<String>,
    /// Whether it was truncated.
    pub truncated: bool,
}

/// Renders one encoded example.
pub fn render_example(
    tokenizer: &TextTokenizer,
    example: &EncodedExample,
) -> Result<RenderedExample> {
    let pieces = example
        .ids
        .iter()
        .map(|&id| tokenizer.piece(id).unwrap_or_else(|| format!("<id {id}>")))
        .collect();
    let texts = token_texts(tokenizer, &example.ids)?;
    let mut targets = Vec::new();
    let mut run: Vec<u32> = Vec::new();
    for (&id, &trained) in example.ids.iter().zip(&example.mask) {
        if trained {
            run.push(id);
        } else if !run.is_empty() {
            targets.push(tokenizer.decode(&std::mem::take(&mut run), false)?);
        }
    }
    if !run.is_empty() {
        targets.push(tokenizer.decode(&run, false)?);
    }
    Ok(RenderedExample {
        source: example.source.clone(),
        format: example.format,
        ids: example.ids.clone(),
        pieces,
        texts,
        mask: example.mask.clone(),
        text: tokenizer.decode(&example.ids, false)?,
        targets,
        truncated: example.truncated,
    })
}

/// What each token adds to the decoded text. Decoding tokens one by one
/// would lose context-dependent details (SentencePiece's leading space), so
/// this decodes growing prefixes and keeps the difference.
fn token_texts(tokenizer: &TextTokenizer, ids: &[u32]) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(ids.len());
    let mut previous = String::new();
    for end in 1..=ids.len() {
        let current = tokenizer.decode(&ids[..end], false)?;
        let common = previous
            .char_indices()
            .zip(current.chars())
            .find(|((_, a), b)| a != b)
            .map_or(previous.len().min(current.len()), |((at, _), _)| at);
        // `common` is a char boundary of both strings: they agree up to it.
        texts.push(current.get(common..).unwrap_or_default().to_string());
        previous = current;
    }
    Ok(texts)
}

impl RenderedExample {
    /// A terminal-friendly view: the text with target runs wrapped in `[[…]]`.
    pub fn annotated(&self) -> String {
        let mut out = String::new();
        let mut in_target = false;
        for (text, &trained) in self.texts.iter().zip(&self.mask) {
            if trained != in_target {
                out.push_str(if trained { "[[" } else { "]]" });
                in_target = trained;
            }
            out.push_str(text);
        }
        if in_target {
            out.push_str("]]");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode::{EncodeOptions, Encoder};
    use crate::format::Example;
    use crate::jsonl::SourceExample;
    use crate::test_support::tiny_spm;

    #[test]
    fn renders_pieces_and_targets() {
        let tok = tiny_spm();
        let enc = Encoder::new(&tok, EncodeOptions::default()).unwrap();
        let set = enc.encode_all(&[SourceExample {
            source: Source {
                file: "f".into(),
                line: 1,
            },
            example: Example::PromptCompletion {
                prompt: "hi".into(),
                completion: "the world".into(),
            },
        }]);
        let r = render_example(&tok, &set.examples[0]).unwrap();
        assert_eq!(r.pieces[..2], ["<s>".to_string(), "[INST]".to_string()]);
        assert_eq!(r.targets, vec!["the world</s>".to_string()]);
        assert_eq!(r.ids.len(), r.pieces.len());
        assert_eq!(r.mask.len(), r.texts.len());
        assert!(
            r.annotated().ends_with("[[ the world</s>]]"),
            "{}",
            r.annotated()
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["pieces"].is_array() && json["mask"].is_array());
    }
}
