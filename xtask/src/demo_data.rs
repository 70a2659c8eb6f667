//! `cargo xtask demo-data`: the demo data set of the end-to-end demo,
//! generated deterministically from a fixed seed.
//!
//! The task is structured extraction: a short sentence mentions one person,
//! one city and one year; the answer is the line
//! `name=<name>; city=<city>; year=<year>`. Sentences come from many
//! templates, names, cities and years, so the model has to learn to copy
//! the right spans rather than memorize answers; the validation set's people
//! never appear in the training set. See `examples/data/demo/README.md`.
//!
//! `--check` regenerates in memory and fails when the committed files
//! differ (nothing is written).

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Training examples.
const TRAIN: usize = 400;
/// Held-out validation examples (people unseen in training).
const VALID: usize = 80;
/// Seed of the generator; changing it changes the committed files.
const SEED: u64 = 0x5eed_da7a_2026;

/// The system prompt of every example.
pub const SYSTEM: &str = "Extract the person, city and year. \
Answer exactly as: name=<name>; city=<city>; year=<year>";

const FIRST_NAMES: &[&str] = &[
    "Amara", "Liam", "Sofia", "Kenji", "Priya", "Mateo", "Fatima", "Oliver", "Ingrid", "Tariq",
    "Chen", "Lucia", "Emeka", "Hannah", "Diego", "Aisha", "Marek", "Yuki", "Noah", "Elena", "Ravi",
    "Chloe", "Kwame", "Freya", "Omar", "Ana", "Tomasz", "Leila", "Jonas", "Mei", "Samuel", "Nadia",
    "Hugo", "Zara", "Pedro", "Inès", "Felix", "Amina", "Lars", "Rosa", "Arjun", "Clara", "Bruno",
    "Nia", "Malik", "Greta", "Hiro", "Lena", "Carlos", "Esther",
];

const LAST_NAMES: &[&str] = &[
    "Okafor",
    "Silva",
    "Tanaka",
    "Sharma",
    "Rossi",
    "Haddad",
    "Novak",
    "Müller",
    "Johansson",
    "Mensah",
    "Kowalski",
    "Nguyen",
    "Fernandes",
    "Petrov",
    "O'Brien",
    "Ibrahim",
    "Lindqvist",
    "Moreau",
    "Costa",
    "Yamamoto",
    "Adeyemi",
    "Kaur",
    "Schmidt",
    "Dubois",
    "Andersen",
    "Castillo",
    "Hoffmann",
    "Mwangi",
    "Bianchi",
    "Papadopoulos",
    "Reyes",
    "Eriksen",
    "Suzuki",
    "Abebe",
    "Kim",
    "López",
    "Walsh",
    "Horvat",
    "Banerjee",
    "Ortiz",
    "Achebe",
    "Berg",
    "Farouk",
    "Jensen",
    "Marino",
    "Osei",
    "Patel",
    "Quinn",
    "Romero",
    "Varga",
];

const CITIES: &[&str] = &[
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Toronto",
    "Bergen",
    "Porto",
    "Krakow",
    "Valparaíso",
    "Hanoi",
    "Accra",
    "Melbourne",
    "Seville",
    "Tbilisi",
    "Montreal",
    "Dublin",
    "Marrakesh",
    "Gdansk",
    "Cusco",
    "Kyoto",
    "Lagos",
    "Oslo",
    "Edinburgh",
    "Bologna",
    "Adelaide",
    "Quito",
    "Tallinn",
    "Cape Town",
    "São Paulo",
    "Buenos Aires",
    "Vienna",
    "Ljubljana",
    "Cork",
    "Busan",
    "Chennai",
    "Izmir",
    "Rotterdam",
    "Antwerp",
    "Leipzig",
    "Halifax",
    "Wellington",
    "Manila",
    "Bogotá",
    "Zanzibar",
    "Reykjavik",
    "Tromsø",
    "Salzburg",
    "Nantes",
    "Valencia",
    "Aarhus",
    "New Orleans",
];

/// Earliest and latest year mentioned.
const YEARS: (u32, u32) = (1950, 2024);

/// Sentence templates: `{name}`, `{city}` and `{year}` appear once each.
const TEMPLATES: &[&str] = &[
    "In {year}, {name} moved to {city} to open a bakery.",
    "{name} graduated from a small college in {city} in {year}.",
    "The first exhibition by {name} opened in {city} in {year}.",
    "Back in {year}, {name} was working as a nurse in {city}.",
    "{city} welcomed {name} as its new librarian in {year}.",
    "{name} ran the {city} marathon for the first time in {year}.",
    "It was {year} when {name} bought a tiny flat in {city}.",
    "According to the archive, {name} was born in {city} in {year}.",
    "{name} founded a bicycle repair shop in {city} in {year}.",
    "During the summer of {year}, {name} taught music in {city}.",
    "The {year} chess championship in {city} was won by {name}.",
    "{name} recorded a debut album in {city} in {year}.",
    "In {city}, {name} opened a tea house in {year}.",
    "Few people know that {name} lived in {city} until {year}.",
    "{name} left {city} in {year} and never came back.",
    "A mural painted by {name} has decorated a wall in {city} since {year}.",
    "In {year} the local newspaper in {city} hired {name} as a photographer.",
    "The city of {city} gave {name} an award for public service in {year}.",
    "Letters show that {name} visited {city} in the spring of {year}.",
    "{name}, a retired engineer, settled in {city} in {year}.",
    "Since {year}, {name} has coached a youth football team in {city}.",
    "The bridge project in {city} was led by {name}, starting in {year}.",
    "{name} opened a small bookshop in {city} back in {year}.",
    "My grandmother met {name} at a dance in {city} in {year}.",
    "Police records from {year} list {name} as a witness in {city}.",
];

/// One generated example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The person's full name.
    pub name: String,
    /// The city.
    pub city: String,
    /// The year.
    pub year: u32,
    /// The sentence mentioning all three.
    pub sentence: String,
}

impl Example {
    /// The expected answer line.
    pub fn answer(&self) -> String {
        format!("name={}; city={}; year={}", self.name, self.city, self.year)
    }

    /// The example as one chat-format JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        let message = |role: &str, content: &str| {
            format!(
                "{{\"role\":\"{role}\",\"content\":\"{}\"}}",
                json_escape(content)
            )
        };
        format!(
            "{{\"messages\":[{},{},{}]}}",
            message("system", SYSTEM),
            message("user", &self.sentence),
            message("assistant", &self.answer())
        )
    }
}

/// A JSON string body: quotes, backslashes and control characters escaped.
pub(crate) fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// SplitMix64: small, fast and the same on every platform.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (n > 0; the modulo bias is negligible here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A random example from `template`.
pub(crate) fn random_example(rng: &mut Rng, template: &str) -> Example {
    let name = format!("{} {}", rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES));
    let city = rng.pick(CITIES).to_string();
    let year = YEARS.0 + rng.below((YEARS.1 - YEARS.0 + 1) as usize) as u32;
    let sentence = template
        .replace("{name}", &name)
        .replace("{city}", &city)
        .replace("{year}", &year.to_string());
    Example {
        name,
        city,
        year,
        sentence,
    }
}

/// A random example from `template` for a person not in `used` (who is added).
fn draw(rng: &mut Rng, used: &mut BTreeSet<String>, template: &str) -> Example {
    loop {
        let example = random_example(rng, template);
        if used.insert(example.name.clone()) {
            return example;
        }
    }
}

/// Templates in turn, each round in a fresh shuffled order, so every
/// template is used about equally often.
pub(crate) struct Templates(pub(crate) Vec<usize>);

impl Templates {
    pub(crate) fn next(&mut self, rng: &mut Rng) -> &'static str {
        if self.0.is_empty() {
            self.0 = (0..TEMPLATES.len()).collect();
            for i in (1..self.0.len()).rev() {
                self.0.swap(i, rng.below(i + 1));
            }
        }
        TEMPLATES[self.0.pop().unwrap_or(0)]
    }
}

/// `count` examples of people not in `used` (who are added).
fn examples(
    count: usize,
    rng: &mut Rng,
    used: &mut BTreeSet<String>,
    templates: &mut Templates,
) -> Vec<Example> {
    (0..count)
        .map(|_| {
            let template = templates.next(rng);
            draw(rng, used, template)
        })
        .collect()
}

/// The training and validation sets: every person (and so every sentence)
/// unique, hence no person of the validation set in the training set.
pub fn generate() -> (Vec<Example>, Vec<Example>) {
    let mut rng = Rng(SEED);
    let mut used = BTreeSet::new();
    let mut templates = Templates(Vec::new());
    let train = examples(TRAIN, &mut rng, &mut used, &mut templates);
    let valid = examples(VALID, &mut rng, &mut used, &mut templates);
    (train, valid)
}

fn jsonl(examples: &[Example]) -> String {
    examples.iter().map(|e| e.to_json_line() + "\n").collect()
}

/// Writes (or with `check`, compares) `examples/data/demo/{train,valid}.jsonl`.
pub fn run(root: &Path, check: bool) -> Result<()> {
    let (train, valid) = generate();
    let dir = root.join("examples/data/demo");
    let files = [
        ("train.jsonl", jsonl(&train)),
        ("valid.jsonl", jsonl(&valid)),
    ];
    if check {
        for (name, text) in &files {
            let path = dir.join(name);
            let committed =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            if committed != *text {
                bail!(
                    "{} is stale: run `cargo xtask demo-data` and commit the result",
                    path.display()
                );
            }
        }
        println!(
            "demo data up to date ({} train, {} valid)",
            train.len(),
            valid.len()
        );
        return Ok(());
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in &files {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote {} ({} examples) and {} ({} examples)",
        dir.join("train.jsonl").display(),
        train.len(),
        dir.join("valid.jsonl").display(),
        valid.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_disjoint_and_well_formed() {
        let (train, valid) = generate();
        assert_eq!((train.len(), valid.len()), (TRAIN, VALID));
        assert_eq!(generate(), (train.clone(), valid.clone()));
        let train_names: BTreeSet<&str> = train.iter().map(|e| e.name.as_str()).collect();
        assert!(valid.iter().all(|e| !train_names.contains(e.name.as_str())));
        let sentences: BTreeSet<&str> = train
            .iter()
            .chain(&valid)
            .map(|e| e.sentence.as_str())
            .collect();
        assert_eq!(sentences.len(), TRAIN + VALID);
        for e in train.iter().chain(&valid) {
            assert!(e.sentence.contains(&e.name) && e.sentence.contains(&e.city));
            assert!(!e.sentence.contains('{'));
            let line = e.to_json_line();
            assert!(line.starts_with("{\"messages\":[{\"role\":\"system\""));
            assert!(!line.contains('\n'));
        }
        assert!(TEMPLATES.len() >= 15);
        assert_eq!(json_escape("a\"b\\c\n\u{1}"), "a\\\"b\\\\c\\n\\u0001");
    }
}
