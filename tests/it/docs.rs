//! The operator's guide held to the code: `docs/configuration.md`'s table lists exactly the
//! keys the configuration knows, each with the environment variables that set it; and every
//! link between the README, `subjects.md` and `docs/` reaches a file and a heading that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clawdforge::config::{env_keys, env_names};

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");

/// The table's header, which the rows follow.
const HEADER: &str = "| key | environment | default | meaning |";

/// Keys that only the config file sets (tables): `env_keys` leaves them out.
const FILE_ONLY_KEYS: &[&str] = &["agents", "app_defaults"];

/// What the environment column says of a key that only the config file sets.
const FILE_ONLY: &str = "(file only)";

/// One row of the configuration table: the key and its environment column.
struct Row {
    key: String,
    env: String,
}

impl Row {
    /// The variable names the environment column gives, each in backticks.
    fn names(&self) -> BTreeSet<String> {
        self.env
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }
}

/// The rows of the configuration table, in order.
fn table() -> Vec<Row> {
    let mut lines = CONFIGURATION.lines().skip_while(|l| *l != HEADER);
    assert_eq!(
        lines.next(),
        Some(HEADER),
        "docs/configuration.md has no table"
    );
    assert_eq!(lines.next(), Some("|---|---|---|---|"));
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells[1].strip_prefix('`').and_then(|k| k.strip_suffix('`'));
            Row {
                key: key
                    .unwrap_or_else(|| panic!("a key in backticks: {line}"))
                    .into(),
                env: cells[2].into(),
            }
        })
        .collect()
}

#[test]
fn the_configuration_table_lists_every_key_once_and_no_other() {
    let rows = table();
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(listed.len(), rows.len(), "a key is listed twice");
    let known: BTreeSet<&str> = env_keys()
        .into_iter()
        .chain(FILE_ONLY_KEYS.iter().copied())
        .collect();
    let missing: Vec<_> = known.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&known).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md lacks {missing:?}, and lists {unknown:?}, which are no config keys"
    );
}

#[test]
fn each_row_names_the_variables_that_set_its_key() {
    for row in table() {
        if FILE_ONLY_KEYS.contains(&row.key.as_str()) {
            assert_eq!(row.env, FILE_ONLY, "{}", row.key);
            continue;
        }
        let names = env_names(&row.key);
        assert_eq!(
            names[0],
            format!("CLAWDFORGE_{}", row.key.to_ascii_uppercase()),
            "the table says every key is set as CLAWDFORGE_<KEY>"
        );
        let given = row.names();
        let aliases: BTreeSet<String> = names[1..].iter().cloned().collect();
        assert!(
            aliases.is_subset(&given),
            "the row of {} lacks {:?}",
            row.key,
            aliases.difference(&given).collect::<Vec<_>>()
        );
        let known: BTreeSet<String> = names.into_iter().collect();
        assert!(
            given.is_subset(&known),
            "the row of {} names {:?}, which do not set it",
            row.key,
            given.difference(&known).collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_readme_points_to_the_configuration_table() {
    let readme = read(&root().join("README.md"));
    assert!(readme.contains("\n## Configuration\n"));
    assert!(readme.contains("](docs/configuration.md)"));
}

#[test]
fn every_link_between_the_docs_reaches_a_file_and_a_heading() {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("subjects.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut broken = Vec::new();
    for file in &files {
        for link in links(&read(file)) {
            if let Err(why) = check(file, &link) {
                let name = file.strip_prefix(&root).unwrap_or(file);
                broken.push(format!("{}: ({link}) {why}", name.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |l| {
        if l.starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the Markdown links `[text](target)` that stay in the checkout.
fn links(text: &str) -> Vec<String> {
    let joined = prose(text).collect::<Vec<_>>().join(" ");
    joined
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .filter(|t| !t.contains("://") && !t.contains(' '))
        .collect()
}

/// Whether `link`, found in `file`, names a file that exists and, after `#`, one of its headings.
fn check(file: &Path, link: &str) -> Result<(), String> {
    let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
    let target = match path {
        "" => file.to_path_buf(),
        path => file.parent().unwrap().join(path),
    };
    if !target.exists() {
        return Err("no such file".into());
    }
    if anchor.is_empty() || anchors(&read(&target)).contains(anchor) {
        Ok(())
    } else {
        Err("no such heading".into())
    }
}

/// The anchors GitHub gives a file's headings: lower case, spaces made `-`, punctuation dropped;
/// a repeated one gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in prose(text).filter(|l| l.starts_with('#')) {
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !found.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    found
}
