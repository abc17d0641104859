//! The default priority rule, in plain Rust, and its conversion into the
//! generated [`PriorityDecision`].
//!
//! Owns [`decide`]: handlers call it from `admit` unless they have a rule of
//! their own. It must not read payloads: refusing a job is the handler's call.

use crate::{AdmitInputs, PriorityClass, PriorityDecision};

/// What [`decide`] reads of a job: a handler whose `admit` is `decide` and
/// nothing else exports with `spool_sdk::export!(H, admit_reads: priority::READS)`,
/// so the host reuses its decisions. (One that also checks the payload must
/// not.)
pub const READS: AdmitInputs = AdmitInputs::PRIORITY.union(AdmitInputs::USER_TIER);

/// The stream a job waits in; mirrors the WIT enum `priority-class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    High,
    Normal,
    Low,
}

/// The outcome of [`decide`]; mirrors the WIT record `priority-decision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub class: Class,
    /// The effective priority, 1..=10.
    pub score: u8,
}

/// Design A's user classes: who the user is picks the class, whatever the
/// number says. Either a name or design A's own 0/1/2 scale is accepted:
/// 2 (high) for paying or VIP users, 1 (normal) for ordinary users, 0 (low)
/// for new or inactive users.
pub fn user_class(user_tier: &str) -> Option<Class> {
    let tier = user_tier.trim().to_ascii_lowercase();
    match tier.as_str() {
        "2" | "vip" | "paying" | "paid" | "premium" => Some(Class::High),
        "1" | "normal" | "ordinary" => Some(Class::Normal),
        "0" | "new" | "inactive" => Some(Class::Low),
        // "standard", empty or unknown: the number decides.
        _ => None,
    }
}

/// Chooses the class and score of a job.
///
/// - The score is the requested priority (brought into 1..=10, which the host
///   already guarantees).
/// - A user class ([`user_class`]) decides the class when the tier names one:
///   paying/VIP users high, new or inactive users low.
/// - Otherwise the class follows the number: 1–3 low, 4–7 normal, 8–10 high.
pub fn decide(priority: u8, user_tier: &str) -> Decision {
    let score = priority.clamp(1, 10);
    let class = user_class(user_tier).unwrap_or(match score {
        1..=3 => Class::Low,
        4..=7 => Class::Normal,
        _ => Class::High,
    });
    Decision { class, score }
}

impl From<Class> for PriorityClass {
    fn from(class: Class) -> Self {
        match class {
            Class::High => PriorityClass::High,
            Class::Normal => PriorityClass::Normal,
            Class::Low => PriorityClass::Low,
        }
    }
}

impl From<Decision> for PriorityDecision {
    fn from(decision: Decision) -> Self {
        PriorityDecision {
            class: decision.class.into(),
            score: decision.score,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_maps_to_its_class() {
        let expected = [
            (1, Class::Low),
            (2, Class::Low),
            (3, Class::Low),
            (4, Class::Normal),
            (5, Class::Normal),
            (6, Class::Normal),
            (7, Class::Normal),
            (8, Class::High),
            (9, Class::High),
            (10, Class::High),
        ];
        for (priority, class) in expected {
            for tier in ["", "standard", "gold-ish"] {
                let decision = decide(priority, tier);
                assert_eq!(
                    decision,
                    Decision { class, score: priority },
                    "priority {priority}, tier {tier:?}"
                );
            }
        }
    }

    #[test]
    fn vip_is_always_high_and_keeps_its_score() {
        for priority in 1..=10 {
            assert_eq!(
                decide(priority, "vip"),
                Decision {
                    class: Class::High,
                    score: priority
                }
            );
        }
        assert_eq!(decide(2, " VIP ").class, Class::High);
    }

    #[test]
    fn design_a_user_classes_decide_whatever_the_number() {
        let classes = [
            ("paying", Class::High),
            ("Paid", Class::High),
            ("premium", Class::High),
            ("2", Class::High),
            ("1", Class::Normal),
            ("ordinary", Class::Normal),
            ("new", Class::Low),
            (" Inactive ", Class::Low),
            ("0", Class::Low),
        ];
        for (tier, class) in classes {
            for priority in [1, 5, 10] {
                assert_eq!(
                    decide(priority, tier),
                    Decision { class, score: priority },
                    "tier {tier:?}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_scores_are_clamped() {
        assert_eq!(
            decide(0, ""),
            Decision {
                class: Class::Low,
                score: 1
            }
        );
        assert_eq!(
            decide(200, ""),
            Decision {
                class: Class::High,
                score: 10
            }
        );
    }

    #[test]
    fn converts_into_the_generated_decision() {
        let cases = [
            (Class::High, PriorityClass::High),
            (Class::Normal, PriorityClass::Normal),
            (Class::Low, PriorityClass::Low),
        ];
        for (class, generated) in cases {
            assert_eq!(
                PriorityDecision::from(Decision { class, score: 7 }),
                PriorityDecision {
                    class: generated,
                    score: 7
                }
            );
        }
    }
}
