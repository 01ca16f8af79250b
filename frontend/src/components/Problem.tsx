import type { Problem } from "../session/messages";

export function ProblemBox({ problem, onDismiss }: { problem: Problem; onDismiss?: () => void }) {
  return (
    <div className="problem" role="alert" data-testid="problem">
      <div>
        <strong>{problem.title}</strong>
        {problem.detail ? <p>{problem.detail}</p> : null}
      </div>
      {onDismiss ? (
        <button type="button" className="button-quiet" onClick={onDismiss} aria-label="Dismiss">
          ×
        </button>
      ) : null}
    </div>
  );
}
