//! Tokenizers: from a HF `tokenizer.json` (+ `tokenizer_config.json`), from
//! GGUF metadata (built in [`crate::gguf_vocab`]), or from a
//! SentencePiece-BPE / byte-level BPE vocabulary.
//!
//! Whatever the source, the result is a [`TextTokenizer`]: a
//! [`tokenizers::Tokenizer`] plus the special-token facts ft-data needs (BOS,
//! EOS, whether to add BOS, which tokens end a turn) and the model's chat
//! template. ft-data adds BOS/EOS itself, so the inner tokenizer is always
//! called with `add_special_tokens = false`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::error::{DataError, Result};

/// Token strings that close a turn in common chat formats; those present in
/// the vocabulary count as end-of-turn tokens (trained on, see
/// [`SpecialTokens::end_of_turn`]).
const END_OF_TURN_STRINGS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

/// The GPT-2 pre-tokenizer regex (also what HF's `ByteLevel(use_regex)` uses).
pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's pre-tokenizer regex.
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte range `(start, end)` in a text.
pub type ByteSpan = (usize, usize);

/// What a vocabulary entry is (GGUF `tokenizer.ggml.token_type` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Ordinary text piece.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token (BOS, EOS, `[INST]`, `<|im_start|>`): never produced from plain text.
    Control,
    /// A user-defined piece, matched verbatim in text.
    UserDefined,
    /// An unused slot.
    Unused,
    /// A byte-fallback piece `<0xXX>`.
    Byte,
}

/// One entry of a SentencePiece vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmPiece {
    /// The piece, with `▁` for spaces.
    pub piece: String,
    /// Its score (higher merges first).
    pub score: f32,
    /// What it is.
    pub kind: TokenKind,
}

/// Special-token facts for a model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Padding id (falls back to EOS, then 0, in [`SpecialTokens::pad_id`]).
    pub pad: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Whether a sequence starts with BOS.
    pub add_bos: bool,
    /// Whether a sequence ends with EOS when the model's tokenizer adds it.
    pub add_eos: bool,
    /// Tokens that close a turn: EOS and e.g. `<|im_end|>`. They are trained
    /// on at the end of an assistant turn so the model learns to stop.
    pub end_of_turn: Vec<u32>,
}

impl SpecialTokens {
    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad.or(self.eos).unwrap_or(0)
    }

    /// True when `id` closes a turn.
    pub fn is_end_of_turn(&self, id: u32) -> bool {
        self.end_of_turn.contains(&id)
    }
}

/// Options for [`TextTokenizer::from_sentencepiece_bpe`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpmOptions {
    /// Explicit merges (left, right) in priority order. `None` derives them
    /// from the piece scores, the way SentencePiece BPE merges.
    pub merges: Option<Vec<(String, String)>>,
    /// Prefix each text segment with `▁` (SentencePiece's dummy prefix).
    pub add_space_prefix: bool,
    /// BOS id.
    pub bos: Option<u32>,
    /// EOS id.
    pub eos: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Add BOS at the start of sequences.
    pub add_bos: bool,
    /// Add EOS at the end of sequences.
    pub add_eos: bool,
}

impl Default for SpmOptions {
    fn default() -> Self {
        SpmOptions {
            merges: None,
            add_space_prefix: true,
            bos: None,
            eos: None,
            pad: None,
            add_bos: true,
            add_eos: false,
        }
    }
}

/// Text in, token ids out: a [`tokenizers::Tokenizer`] with the special-token
/// facts and chat template of one model.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Splits out special/added tokens written in the text (for rendered templates).
    tokenizer: Tokenizer,
    /// Treats special-token strings as plain text (for user content).
    literal: Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
    /// Where the chat template was read, for error messages.
    chat_template_origin: Option<String>,
    bos_text: Option<String>,
    eos_text: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a tokenizer from a path: a `.gguf` file, a `tokenizer.json`, or a
    /// directory holding `tokenizer.json` (and optionally `tokenizer_config.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::from_tokenizer_json(path.join("tokenizer.json"));
        }
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            Self::from_gguf(path)
        } else {
            Self::from_tokenizer_json(path)
        }
    }

    /// Loads a HF `tokenizer.json`; reads `tokenizer_config.json` (and
    /// `chat_template.jinja`) next to it when present.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read(path)?;
        let tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| DataError::tokenizer(tokenizer_json_problem(path, &bytes, &e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            serde_json::from_slice(&read(&config_path)?).map_err(|e| {
                DataError::tokenizer(format!("{}: not valid JSON: {e}", config_path.display()))
            })?
        } else {
            Value::Null
        };
        let mut template = chat_template_from_config(&config).map_err(|message| {
            DataError::tokenizer(format!("{}: {message}", config_path.display()))
        })?;
        let mut origin = format!("{} field `chat_template`", config_path.display());
        let jinja_path = dir.join("chat_template.jinja");
        if template.is_none() && jinja_path.exists() {
            template = Some(
                String::from_utf8(read(&jinja_path)?)
                    .map_err(|e| DataError::template(format!("{}: {e}", jinja_path.display())))?,
            );
            origin = jinja_path.display().to_string();
        }
        let mut tokenizer = Self::from_hf_parts(tokenizer, &config, template)?;
        if tokenizer.chat_template.is_some() {
            tokenizer.chat_template_origin = Some(origin);
        }
        Ok(tokenizer)
    }

    /// Builds from an in-memory HF tokenizer and its `tokenizer_config.json`
    /// value (`Value::Null` when there is none).
    pub fn from_hf_parts(
        tokenizer: Tokenizer,
        config: &Value,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let token_text = |key: &str| -> Option<String> {
            match config.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos_text = token_text("bos_token");
        let eos_text = token_text("eos_token");
        let id_of = |text: &Option<String>| text.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let bos = id_of(&bos_text);
        let eos = id_of(&eos_text);
        let pad = id_of(&token_text("pad_token"));
        let unk = id_of(&token_text("unk_token"));
        // Without an explicit setting, ask the tokenizer's post-processor.
        let probe = tokenizer.encode("a", true).ok();
        let probe_ids = probe.as_ref().map(|e| e.get_ids()).unwrap_or_default();
        let add_bos = config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| bos.is_some() && probe_ids.first() == bos.as_ref());
        let add_eos = config
            .get("add_eos_token")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| eos.is_some() && probe_ids.last() == eos.as_ref());
        let special = SpecialTokens {
            bos,
            eos,
            pad,
            unk,
            add_bos,
            add_eos,
            end_of_turn: Vec::new(),
        };
        Ok(Self::assemble(
            tokenizer,
            special,
            chat_template,
            bos_text,
            eos_text,
        ))
    }

    /// Builds a byte-level BPE tokenizer (GPT-2 style) from tokens, their
    /// kinds, merges and the pre-tokenizer family name used by llama.cpp
    /// (`tokenizer.ggml.pre`: `default`, `gpt2`, `smollm`, `starcoder`,
    /// `llama3`/`llama-bpe`, `qwen2`, …; unknown names fall back to GPT-2's
    /// regex with a warning).
    pub fn from_byte_level_bpe(
        tokens: &[&str],
        kinds: &[TokenKind],
        merges: Vec<(String, String)>,
        pre: &str,
        special: SpecialTokens,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| ((*t).to_string(), id as u32))
            .collect();
        let family = pre_tokenizer_family(pre);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(family.ignore_merges)
            .build()
            .map_err(DataError::tokenizer)?;
        let mut tokenizer = Tokenizer::new(bpe);

        let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
        for regex in family.regexes {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(DataError::tokenizer)?;
            pre_tokenizers.push(split.into());
        }
        pre_tokenizers.push(ByteLevel::new(false, false, false).into());
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre_tokenizers)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
        add_special_pieces(&mut tokenizer, tokens, kinds);
        let bos_text = special.bos.and_then(|id| tokenizer.id_to_token(id));
        let eos_text = special.eos.and_then(|id| tokenizer.id_to_token(id));
        Ok(Self::assemble(
            tokenizer,
            special,
            chat_template,
            bos_text,
            eos_text,
        ))
    }

    /// Builds a SentencePiece-BPE tokenizer (Llama/Mistral style): `▁` for
    /// spaces, byte fallback through `<0xXX>` pieces, control tokens kept out
    /// of plain text. The piece's index is its id.
    pub fn from_sentencepiece_bpe(pieces: Vec<SpmPiece>, options: SpmOptions) -> Result<Self> {
        let mut vocab: Vocab = Vocab::default();
        for (id, p) in pieces.iter().enumerate() {
            // On duplicate pieces the first id wins, as in SentencePiece.
            vocab.entry(p.piece.clone()).or_insert(id as u32);
        }
        let merges = match options.merges {
            Some(merges) => merges,
            None => merges_from_scores(&pieces, &vocab),
        };
        let unk = pieces
            .iter()
            .position(|p| p.kind == TokenKind::Unknown)
            .map(|id| id as u32);
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(pieces[unk as usize].piece.clone());
        }
        let bpe = builder.build().map_err(DataError::tokenizer)?;
        let mut tokenizer = Tokenizer::new(bpe);

        // The dummy prefix goes on every text segment, including text right
        // after a special token, as llama.cpp does for SentencePiece vocabularies
        // (and as SentencePiece does for each separately encoded piece of text).
        let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
        if options.add_space_prefix {
            normalizers.push(Prepend::new("▁".into()).into());
        }
        normalizers.push(Replace::new(" ", "▁").map_err(DataError::tokenizer)?.into());
        tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ").map_err(DataError::tokenizer)?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if options.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
        let texts: Vec<&str> = pieces.iter().map(|p| p.piece.as_str()).collect();
        let kinds: Vec<TokenKind> = pieces.iter().map(|p| p.kind).collect();
        add_special_pieces(&mut tokenizer, &texts, &kinds);

        let special = SpecialTokens {
            bos: options.bos,
            eos: options.eos,
            pad: options.pad,
            unk,
            add_bos: options.add_bos && options.bos.is_some(),
            add_eos: options.add_eos && options.eos.is_some(),
            end_of_turn: Vec::new(),
        };
        let bos_text = options.bos.and_then(|id| tokenizer.id_to_token(id));
        let eos_text = options.eos.and_then(|id| tokenizer.id_to_token(id));
        Ok(Self::assemble(tokenizer, special, None, bos_text, eos_text))
    }

    fn assemble(
        tokenizer: Tokenizer,
        mut special: SpecialTokens,
        chat_template: Option<String>,
        bos_text: Option<String>,
        eos_text: Option<String>,
    ) -> Self {
        let mut end_of_turn: Vec<u32> = special.eos.into_iter().collect();
        for text in END_OF_TURN_STRINGS {
            if let Some(id) = tokenizer.token_to_id(text) {
                // Only count real special tokens, not ordinary pieces that happen to match.
                let is_added = tokenizer
                    .get_added_tokens_decoder()
                    .get(&id)
                    .is_some_and(|t| t.special);
                if is_added && !end_of_turn.contains(&id) {
                    end_of_turn.push(id);
                }
            }
        }
        special.end_of_turn = end_of_turn;
        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);
        TextTokenizer {
            tokenizer,
            literal,
            special,
            chat_template,
            chat_template_origin: None,
            bos_text,
            eos_text,
        }
    }

    /// Encodes `text`, turning special-token strings written in it (e.g.
    /// `<|im_start|>`) into their ids. Adds no BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(DataError::tokenizer)
    }

    /// Encodes `text` treating special-token strings as plain text, as user
    /// content should be. Adds no BOS/EOS.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        self.literal
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(DataError::tokenizer)
    }

    /// Like [`encode`](Self::encode), with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(DataError::tokenizer)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids to text, optionally leaving special tokens out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(DataError::tokenizer)
    }

    /// The vocabulary piece of `id` (e.g. `Ġhello`, `▁hello`, `<0x0A>`).
    pub fn piece(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// The id of a vocabulary piece.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.tokenizer.token_to_id(piece)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Special-token facts.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Mutable special-token facts, to override what the files said.
    pub fn special_mut(&mut self) -> &mut SpecialTokens {
        &mut self.special
    }

    /// The model's Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replaces the chat template.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
        self.chat_template_origin = None;
    }

    /// Records where the chat template was read (a file and field).
    pub(crate) fn set_chat_template_origin(&mut self, origin: String) {
        self.chat_template_origin = Some(origin);
    }

    /// Where the model's chat template was read (a file and field), when known.
    pub fn chat_template_origin(&self) -> Option<&str> {
        self.chat_template_origin.as_deref()
    }

    /// The BOS token's text (for templates' `bos_token`).
    pub fn bos_text(&self) -> Option<&str> {
        self.bos_text.as_deref()
    }

    /// The EOS token's text (for templates' `eos_token`).
    pub fn eos_text(&self) -> Option<&str> {
        self.eos_text.as_deref()
    }

    /// The wrapped HF tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// True when `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// `chat_template` from a `tokenizer_config.json`: a string, or a list of
/// named templates of which `default` is taken. Any other value is an
/// error: silently falling back to another format would train on the wrong
/// markup.
fn chat_template_from_config(config: &Value) -> std::result::Result<Option<String>, String> {
    let expected = "field `chat_template`: expected a string or a list of \
                    {\"name\", \"template\"} objects";
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(|template| Some(template.to_string()))
            .ok_or_else(|| format!("{expected}, got a list without a `template` string")),
        Some(other) => Err(format!("{expected}, got {other}")),
    }
}

/// Why `tokenizer.json` did not load: not JSON at all, a `model.type` the
/// tokenizers library does not know, or the library's own message.
fn tokenizer_json_problem(path: &Path, bytes: &[u8], error: &dyn std::fmt::Display) -> String {
    const MODEL_TYPES: [&str; 4] = ["BPE", "Unigram", "WordLevel", "WordPiece"];
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(json) => return format!("{}: not valid JSON: {json}", path.display()),
    };
    match value.pointer("/model/type") {
        Some(Value::String(kind)) if !MODEL_TYPES.contains(&kind.as_str()) => format!(
            "{}: field `model.type`: expected one of {}, got {kind:?}",
            path.display(),
            MODEL_TYPES.join(", ")
        ),
        _ => format!("{}: {error}", path.display()),
    }
}

/// How llama.cpp pre-tokenizes one `tokenizer.ggml.pre` family.
struct PreTokenizerFamily {
    /// Split regexes, applied in order.
    regexes: Vec<&'static str>,
    /// A pre-token found whole in the vocabulary is taken as is, without
    /// running merges (Llama 3's `ignore_merges`).
    ignore_merges: bool,
}

fn pre_tokenizer_family(pre: &str) -> PreTokenizerFamily {
    let (regexes, ignore_merges) = match pre {
        "default" | "gpt2" | "gpt-2" | "olmo" | "phi-2" | "jina-es" | "jina-de" => {
            (vec![GPT2_REGEX], false)
        }
        // Digits one by one, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_REGEX], false)
        }
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3_REGEX], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => (vec![QWEN2_REGEX], false),
        other => {
            tracing::warn!(
                pre = other,
                "unknown tokenizer.ggml.pre; using the GPT-2 pre-tokenizer"
            );
            (vec![GPT2_REGEX], false)
        }
    };
    PreTokenizerFamily {
        regexes,
        ignore_merges,
    }
}

/// Registers control, unknown and user-defined pieces as added tokens, so
/// they are matched whole in rendered templates (and control tokens are
/// never produced from plain text by merges).
fn add_special_pieces(tokenizer: &mut Tokenizer, tokens: &[&str], kinds: &[TokenKind]) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (piece, kind) in tokens.iter().zip(kinds) {
        match kind {
            TokenKind::Control | TokenKind::Unknown => {
                special.push(AddedToken::from(*piece, true).normalized(false));
            }
            TokenKind::UserDefined => user.push(AddedToken::from(*piece, false).normalized(false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
}

/// SentencePiece-BPE merges from scores: every split of a normal piece into
/// two pieces of the vocabulary is a merge ranked by the merged piece's score
/// (then by the halves' ids), like HF's converter does.
fn merges_from_scores(pieces: &[SpmPiece], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for p in pieces.iter().filter(|p| p.kind == TokenKind::Normal) {
        let boundaries: Vec<usize> = p.piece.char_indices().map(|(i, _)| i).skip(1).collect();
        for at in boundaries {
            let (left, right) = p.piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((p.score, l, r, left.to_string(), right.to_string()));
            }
        }
    }
    // Stable: higher score first, ties by (left id, right id).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::tiny_spm;

    #[test]
    fn spm_byte_fallback_and_prefix() {
        let tok = tiny_spm();
        let ids = tok.encode_literal("ab é").unwrap();
        let pieces: Vec<String> = ids.iter().map(|&i| tok.piece(i).unwrap()).collect();
        assert_eq!(pieces[0], "▁ab");
        // 'é' is not in the vocabulary: two byte pieces.
        assert!(
            pieces.contains(&"<0xC3>".to_string()) && pieces.contains(&"<0xA9>".to_string()),
            "{pieces:?}"
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), "ab é");
        // Control tokens in user text stay text; in rendered text they are control ids.
        assert_eq!(tok.encode("[INST]").unwrap(), vec![3]);
        assert_ne!(tok.encode_literal("[INST]").unwrap(), vec![3]);
    }

    #[test]
    fn loads_tokenizer_json_with_config() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = tiny_spm();
        tiny.inner()
            .save(dir.path().join("tokenizer.json"), false)
            .unwrap();
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "special": true},
            "eos_token": "</s>",
            "add_bos_token": true,
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}
            ]
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = TextTokenizer::from_path(dir.path()).unwrap();
        let s = tok.special();
        assert_eq!(
            (s.bos, s.eos, s.add_bos, s.add_eos),
            (Some(1), Some(2), true, false)
        );
        assert_eq!(tok.bos_text(), Some("<s>"));
        assert!(tok.chat_template().unwrap().starts_with("{{ bos_token }}"));
        assert_eq!(
            tok.encode_literal("hi ab").unwrap(),
            tiny.encode_literal("hi ab").unwrap()
        );

        // Without add_bos_token, the post-processor decides (none here: no BOS).
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<s>"}"#,
        )
        .unwrap();
        let tok = TextTokenizer::from_tokenizer_json(dir.path().join("tokenizer.json")).unwrap();
        assert!(!tok.special().add_bos);
        assert!(tok.chat_template().is_none());
    }
}
