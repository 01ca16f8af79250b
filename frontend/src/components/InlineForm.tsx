import type { FormEvent, ReactNode } from "react";

interface Props {
  /** The input's id (its label points at it). */
  id: string;
  label: string;
  value: string;
  onChange(value: string): void;
  onSubmit(event: FormEvent): void;
  type?: "text" | "search";
  placeholder?: string;
  maxLength?: number;
  className?: string;
  role?: string;
  formTestId?: string;
  inputTestId?: string;
  /** The buttons beside the input. */
  children: ReactNode;
}

/** A labelled one-line input with its buttons on the same row: search, a typed message. */
export function InlineForm(props: Props) {
  return (
    <form className={props.className} role={props.role} onSubmit={props.onSubmit} data-testid={props.formTestId}>
      <label htmlFor={props.id}>{props.label}</label>
      <div className="buttons">
        <input
          id={props.id}
          type={props.type ?? "text"}
          value={props.value}
          onChange={(e) => props.onChange(e.target.value)}
          placeholder={props.placeholder}
          maxLength={props.maxLength}
          autoComplete="off"
          data-testid={props.inputTestId}
        />
        {props.children}
      </div>
    </form>
  );
}
