//! The command line: the orchestrators' `--option value` flags, and the
//! `key=value` arguments a role process gets from its orchestrator.

use std::{collections::BTreeMap, str::FromStr};

use crate::Error;

/// An implementation compared by a harness, named on the command line.
pub(crate) trait Named: Copy + 'static {
    /// Every implementation, in the order of the report.
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|imp| imp.name() == name)
            .ok_or_else(|| format!("unknown implementation {name:?}").into())
    }
}

/// Parses one value, naming the option when it does not parse.
fn parse_value<T: FromStr>(option: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|err| format!("{option} {value:?}: {err}").into())
}

/// The orchestrator's options, walked one flag at a time.
pub(crate) struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
    current: &'a str,
}

impl<'a> Flags<'a> {
    pub(crate) fn new(args: &'a [String]) -> Self {
        Self {
            args: args.iter(),
            current: "",
        }
    }

    /// The next flag; `--bench` (what `cargo bench` passes) is skipped.
    pub(crate) fn next_flag(&mut self) -> Option<&'a str> {
        loop {
            let flag = self.args.next()?.as_str();
            if flag != "--bench" {
                self.current = flag;
                return Some(flag);
            }
        }
    }

    /// The value after the current flag.
    pub(crate) fn value<T: FromStr>(&mut self) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.text()?;
        parse_value(self.current, value)
    }

    /// The value after the current flag, a comma-separated list.
    pub(crate) fn list<T: FromStr>(&mut self) -> Result<Vec<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        let current = self.current;
        self.text()?
            .split(',')
            .map(|item| parse_value(current, item))
            .collect()
    }

    /// The value after the current flag, a comma-separated list of names.
    pub(crate) fn names<T: Named>(&mut self) -> Result<Vec<T>, Error> {
        self.text()?.split(',').map(T::parse).collect()
    }

    fn text(&mut self) -> Result<&'a str, Error> {
        self.args
            .next()
            .map(String::as_str)
            .ok_or_else(|| format!("{} needs a value", self.current).into())
    }

    /// The error for a flag nobody knows.
    pub(crate) fn unknown(&self) -> Error {
        format!("unknown option {}", self.current).into()
    }
}

/// `key=value` arguments of a role process.
pub(crate) struct KeyValues(BTreeMap<String, String>);

impl KeyValues {
    pub(crate) fn parse(args: &[String]) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for arg in args.iter().filter(|arg| *arg != "--bench") {
            let (key, value) = arg.split_once('=').ok_or("expected key=value")?;
            map.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, key: &str) -> Result<&str, Error> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {key}").into())
    }

    /// The value of `key` parsed, or `None` when it is absent.
    pub(crate) fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        self.0
            .get(key)
            .map(|value| parse_value(key, value))
            .transpose()
    }

    pub(crate) fn num<T: FromStr>(&self, key: &str) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        parse_value(key, self.get(key)?)
    }
}

/// Renders `key=value` arguments for a role process.
pub(crate) fn key_values<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Vec<String> {
    pairs
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}
