//! The standing allowance of a busy instance on a fast backend: tokens of the
//! shared bucket taken ahead of its checks, which its next checks spend
//! without a call. The script grants them only from a bucket with tokens to
//! spare (`acquire.lua`); `reservations` asks for them, renews them and gives
//! back what was not spent.
//!
//! Tokens may be spent for [`WINDOW`] after the call that took them left: a
//! 429 that another instance reports stops this one at most that much later
//! (its own stops it at once, [`Allowance::void`]). A busy instance renews its
//! allowance before it runs out or closes, so its checks never wait for a
//! call; an idle one gives the rest back when the window closes.
//!
//! Owns the tokens in hand and their window. It never calls Redis.

use std::time::{Duration, Instant};

/// How long tokens may be spent after the call that took them left.
pub(super) const WINDOW: Duration = Duration::from_millis(10);
/// The most tokens held at once.
pub(super) const MAX: u32 = 64;

/// Tokens a call granted.
pub(super) struct Granted {
    pub tokens: u32,
    /// The rate-limit episode they were taken in.
    pub generation: i64,
    pub rate: f64,
}

/// One token spent.
pub(super) struct Token {
    pub generation: i64,
    pub rate: f64,
    /// Tokens still in hand.
    pub left: u32,
    /// The allowance runs low: ask for more now (said once per renewal).
    pub renew: bool,
}

#[derive(Default)]
pub(super) struct Allowance {
    tokens: u32,
    generation: i64,
    rate: f64,
    /// Spent until then; `None`: only given back.
    until: Option<Instant>,
    /// A renewal was asked for and not yet answered.
    renewing: bool,
    /// When it was last voided: tokens of a call sent before are only given back.
    voided: Option<Instant>,
}

impl Allowance {
    /// One token, while the window is open.
    pub fn spend(&mut self, now: Instant) -> Option<Token> {
        let until = self.until.filter(|until| now < *until)?;
        self.tokens = self.tokens.checked_sub(1)?;
        let low = self.tokens <= MAX / 4 || until - now <= WINDOW / 2;
        let renew = low && !self.renewing;
        self.renewing |= renew;
        Some(Token {
            generation: self.generation,
            rate: self.rate,
            left: self.tokens,
            renew,
        })
    }

    /// Tokens to ask for in the next call: some when `wanted` (a check
    /// found none to spend) or a renewal is due.
    pub fn wanted(&self, wanted: bool) -> u32 {
        if wanted || self.renewing {
            MAX.saturating_sub(self.tokens)
        } else {
            0
        }
    }

    /// Adds what a call that left at `sent` granted, and opens a new window,
    /// unless the allowance was voided after the call left.
    pub fn grant(&mut self, granted: Option<Granted>, sent: Instant) {
        self.renewing = false;
        let Some(granted) = granted else {
            return;
        };
        self.tokens = self.tokens.saturating_add(granted.tokens);
        self.generation = granted.generation;
        self.rate = granted.rate;
        if self.voided.is_none_or(|voided| voided < sent) {
            self.until = Some(sent + WINDOW);
        }
    }

    /// Nothing more is spent (this instance was rate-limited), not even
    /// what a call in flight grants; the tokens go back with the next call.
    pub fn void(&mut self) {
        self.until = None;
        self.voided = Some(Instant::now());
    }

    /// The tokens to give back: all of them once the window has closed.
    pub fn take_closed(&mut self, now: Instant) -> u32 {
        if self.until.is_some_and(|until| now < until) {
            return 0;
        }
        self.until = None;
        std::mem::take(&mut self.tokens)
    }

    /// When tokens in hand must be given back, if any are.
    pub fn closes_at(&self, now: Instant) -> Option<Instant> {
        (self.tokens > 0).then(|| self.until.unwrap_or(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(tokens: u32) -> Option<Granted> {
        Some(Granted {
            tokens,
            generation: 3,
            rate: 1000.0,
        })
    }

    #[test]
    fn tokens_are_spent_within_the_window_and_given_back_after_it() {
        let sent = Instant::now();
        let mut allowance = Allowance::default();
        assert!(allowance.spend(sent).is_none(), "nothing granted yet");
        allowance.grant(granted(MAX), sent);
        let token = allowance.spend(sent).expect("a token");
        assert_eq!(
            (token.generation, token.left, token.renew),
            (3, MAX - 1, false)
        );
        assert_eq!(allowance.take_closed(sent), 0, "the window is open");
        let closed = sent + WINDOW;
        assert_eq!(allowance.closes_at(sent), Some(closed));
        assert!(allowance.spend(closed).is_none(), "the window closed");
        assert_eq!(allowance.take_closed(closed), MAX - 1);
        assert_eq!(
            allowance.closes_at(closed),
            None,
            "nothing left to give back"
        );
    }

    #[test]
    fn a_renewal_is_asked_once_when_tokens_run_low_or_the_window_half_closes() {
        let sent = Instant::now();
        let mut allowance = Allowance::default();
        allowance.grant(granted(MAX / 4 + 2), sent);
        assert!(!allowance.spend(sent).expect("a token").renew);
        assert_eq!(allowance.wanted(false), 0);
        assert!(
            allowance.spend(sent).expect("a token").renew,
            "down to a quarter"
        );
        assert!(!allowance.spend(sent).expect("a token").renew, "asked once");
        assert_eq!(allowance.wanted(false), MAX - (MAX / 4 - 1));

        // The renewal adds what was asked to what is left, and opens a new window.
        let later = sent + WINDOW / 2;
        allowance.grant(granted(allowance.wanted(false)), later);
        assert_eq!(allowance.wanted(false), 0);
        let token = allowance.spend(later).expect("a token");
        assert_eq!((token.left, token.renew), (MAX - 1, false));
        let half_closed = later + WINDOW / 2;
        assert!(allowance.spend(half_closed).expect("a token").renew);
    }

    #[test]
    fn a_voided_allowance_is_not_spent_and_goes_back_at_once() {
        let sent = Instant::now();
        let mut allowance = Allowance::default();
        allowance.grant(granted(10), sent);
        allowance.void();
        assert!(allowance.spend(sent).is_none());
        assert_eq!(allowance.closes_at(sent), Some(sent));
        assert_eq!(allowance.take_closed(sent), 10);
    }

    #[test]
    fn tokens_of_a_call_in_flight_when_voided_are_only_given_back() {
        let sent = Instant::now();
        let mut allowance = Allowance::default();
        allowance.void();
        allowance.grant(granted(10), sent);
        assert!(allowance.spend(sent).is_none());
        assert_eq!(allowance.take_closed(sent), 10);
        let later = Instant::now() + Duration::from_millis(1);
        allowance.grant(granted(10), later);
        assert!(
            allowance.spend(later).is_some(),
            "a later call's grant is spent"
        );
    }

    #[test]
    fn a_call_that_grants_nothing_keeps_the_window_it_had() {
        let sent = Instant::now();
        let mut allowance = Allowance::default();
        allowance.grant(granted(MAX / 4 + 1), sent);
        assert!(allowance.spend(sent).expect("a token").renew);
        allowance.grant(None, sent + WINDOW / 2);
        assert_eq!(allowance.closes_at(sent), Some(sent + WINDOW));
        assert_eq!(allowance.wanted(false), 0, "the renewal was answered");
    }
}
