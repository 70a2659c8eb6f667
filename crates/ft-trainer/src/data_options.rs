//! The `[data]` settings as ft-data options: the one place where ft-config's
//! [`DataConfig`] (and the batch settings of [`TrainingConfig`]) become
//! ft-data's [`DataOptions`] and [`BatchOptions`], for the trainer and for
//! `ft data ...` alike.

use ft_config::{ChatTemplate, DataConfig, DataFormat, OverLengthPolicy, TrainingConfig};
use ft_data::{BatchOptions, DataOptions, EncodeOptions, Format, LabelFilter, TemplateChoice};
use ft_data::{OverLengthPolicy as DataOverLength, TrainOn};

/// The ChatML format (`<|im_start|>role\ncontent<|im_end|>\n`) as a Jinja
/// template, for `data.template = "chatml"`. No default system prompt is
/// added; the generation prompt is `<|im_start|>assistant\n`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Reading and encoding options for the data files of `config`.
///
/// * `format`: `auto` detects per file, anything else is forced;
/// * `max_seq_len` and `over_length`: the encoder's length policy;
/// * `mask_prompt`: loss on completions only (`true`) or on every token;
/// * `template`: see [`template_choice`].
///
/// Preference data keeps only desirable examples (supervised fine-tuning);
/// tokenization runs in parallel.
pub fn data_options(config: &DataConfig) -> DataOptions {
    DataOptions {
        format: data_format(config.format),
        encode: EncodeOptions {
            max_len: usize::try_from(config.max_seq_len).unwrap_or(usize::MAX),
            over_length: over_length_policy(config.over_length),
            train_on: if config.mask_prompt {
                TrainOn::Completions
            } else {
                TrainOn::All
            },
            labels: LabelFilter::Desirable,
            template: template_choice(config.template),
            parallel: true,
        },
    }
}

/// The forced format for a `data.format` value (`None` for `auto`).
pub fn data_format(format: DataFormat) -> Option<Format> {
    match format {
        DataFormat::Auto => None,
        DataFormat::Chat => Some(Format::Chat),
        DataFormat::PromptCompletion => Some(Format::PromptCompletion),
        DataFormat::Text => Some(Format::Text),
        DataFormat::Preference => Some(Format::Preference),
    }
}

/// ft-data's policy for a `data.over_length` value.
pub fn over_length_policy(policy: OverLengthPolicy) -> DataOverLength {
    match policy {
        OverLengthPolicy::Truncate => DataOverLength::Truncate,
        OverLengthPolicy::Drop => DataOverLength::Drop,
        OverLengthPolicy::Error => DataOverLength::Error,
    }
}

/// The chat format for a `data.template` value: `auto` is the model's own
/// template (else Mistral v3), `mistral-v3` the built-in Mistral v0.3
/// format, `chatml` [`CHATML_TEMPLATE`].
pub fn template_choice(template: ChatTemplate) -> TemplateChoice {
    match template {
        ChatTemplate::Auto => TemplateChoice::Auto,
        ChatTemplate::MistralV3 => TemplateChoice::MistralV3,
        ChatTemplate::Chatml => TemplateChoice::Jinja(CHATML_TEMPLATE.to_string()),
    }
}

/// Batching for training: `training.batch_size` rows, shuffled with
/// `training.seed`, packed to `data.max_seq_len` when `data.packing` is on,
/// padded with `pad_id` (the tokenizer's
/// [`SpecialTokens::pad_id`](ft_data::SpecialTokens::pad_id)).
pub fn batch_options(training: &TrainingConfig, data: &DataConfig, pad_id: u32) -> BatchOptions {
    BatchOptions {
        batch_size: usize::try_from(training.batch_size).unwrap_or(usize::MAX),
        seed: training.seed,
        packing: data.packing,
        pack_len: usize::try_from(data.max_seq_len).unwrap_or(usize::MAX),
        pad_id,
        ..BatchOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_onto_the_data_defaults() {
        let options = data_options(&DataConfig::default());
        assert_eq!(options.format, None);
        assert_eq!(options.encode.max_len, 2048);
        assert_eq!(options.encode.over_length, DataOverLength::Truncate);
        assert_eq!(options.encode.train_on, TrainOn::Completions);
        assert_eq!(options.encode.template, TemplateChoice::Auto);
        assert_eq!(options, DataOptions::default());
    }

    #[test]
    fn every_setting_is_carried() {
        let config = DataConfig {
            format: DataFormat::PromptCompletion,
            max_seq_len: 512,
            over_length: OverLengthPolicy::Drop,
            mask_prompt: false,
            template: ChatTemplate::Chatml,
            packing: true,
            ..DataConfig::default()
        };
        let options = data_options(&config);
        assert_eq!(options.format, Some(Format::PromptCompletion));
        assert_eq!(options.encode.max_len, 512);
        assert_eq!(options.encode.over_length, DataOverLength::Drop);
        assert_eq!(options.encode.train_on, TrainOn::All);
        assert_eq!(
            options.encode.template,
            TemplateChoice::Jinja(CHATML_TEMPLATE.to_string())
        );
        let training = TrainingConfig {
            batch_size: 8,
            seed: 7,
            ..TrainingConfig::default()
        };
        let batch = batch_options(&training, &config, 2);
        assert_eq!(
            (
                batch.batch_size,
                batch.seed,
                batch.packing,
                batch.pack_len,
                batch.pad_id
            ),
            (8, 7, true, 512, 2)
        );
        for name in DataFormat::NAMES {
            let format = DataFormat::from_name(name).map(data_format);
            assert_eq!(
                format.flatten().map(|f| f.name()),
                Some(*name).filter(|n| *n != "auto")
            );
        }
        assert_eq!(
            template_choice(ChatTemplate::MistralV3),
            TemplateChoice::MistralV3
        );
    }
}
